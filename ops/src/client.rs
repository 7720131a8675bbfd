//! The async shell around [`Route`]: connects to the cluster's nodes, runs attempts, follows
//! leader redirects and backs off, all under one deadline per command.
//!
//! gRPC runs over TLS (`https://ADDR`): the client presents an [`Identity`] (a certificate from
//! the cluster CA with a role, see `tetrad_config::role`) and trusts only the cluster CA. Every
//! client of the API (tetradctl, the tests' pusher, the benches) connects through [`endpoint`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use tetrad_proto::v1::tetrad_client::TetradClient;
use tokio::time::{sleep_until, timeout_at, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::failure::Failure;
use crate::route::{Decision, Route};

/// How long to wait for a node to accept a connection before trying the next one.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one small request may take on one node before the next node is tried. Pushes and
/// fetches are bounded by the command's deadline only: a push legitimately waits while the
/// tenant applies back pressure.
pub const UNARY_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message tetradctl accepts or sends. WAL data travels in 1 MiB messages.
pub const MAX_MESSAGE_BYTES: usize = 8 << 20;

pub type Client = TetradClient<Channel>;

/// Where `cluster up --local` puts the admin identity, under the cluster directory; tetradctl
/// uses it unless `--identity` names another.
pub const DEFAULT_IDENTITY: &str = "identities/admin";

/// A client identity: `DIR/NAME.crt`, `DIR/NAME.key` and the CA to trust, `DIR/ca.crt`, as
/// `tetradctl certs issue` writes them.
#[derive(Clone)]
pub struct Identity {
    /// `DIR/NAME`, for messages.
    pub path: PathBuf,
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

// The key must never reach a log line through `{:?}`.
impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Identity {
    /// Reads the identity `DIR/NAME` (the three files above).
    pub fn load(path: &Path) -> anyhow::Result<Identity> {
        let file = |ext: &str| {
            let mut p = path.as_os_str().to_owned();
            p.push(ext);
            PathBuf::from(p)
        };
        let ca = path.parent().unwrap_or(Path::new(".")).join("ca.crt");
        let read = |p: &Path| {
            std::fs::read_to_string(p).with_context(|| {
                format!(
                    "cannot read {} of identity {} (make one with `tetradctl certs issue`, or pass --identity DIR/NAME)",
                    p.display(),
                    path.display()
                )
            })
        };
        Ok(Identity {
            path: path.to_owned(),
            ca_pem: read(&ca)?,
            cert_pem: read(&file(".crt"))?,
            key_pem: read(&file(".key"))?,
        })
    }

    /// The identity of the cluster directory's admin (`DIR/identities/admin`).
    pub fn default_path(cluster_dir: &Path) -> PathBuf {
        cluster_dir.join(DEFAULT_IDENTITY)
    }

    /// An identity from PEM text, for tests and tools that hold certificates in memory.
    pub fn from_pem(path: PathBuf, ca_pem: String, cert_pem: String, key_pem: String) -> Identity {
        Identity { path, ca_pem, cert_pem, key_pem }
    }

    fn tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

/// The endpoint of one node's API at `addr` (`host:port`), presenting `identity`. The node's
/// certificate is checked against the address dialled (node certificates name loopback
/// addresses; client certificates do not, so a client can never pose as a node).
pub fn endpoint(addr: &str, identity: &Identity) -> Result<Endpoint, String> {
    Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| format!("not a valid address: {e}"))?
        .tls_config(identity.tls())
        .map_err(|e| format!("identity {}: {}", identity.path.display(), error_chain(&e)))
}

/// Why a command stopped talking to the cluster.
#[derive(Debug, Clone)]
pub enum GaveUp {
    /// A node answered definitively (see [`Failure::decision`]).
    Refused(Failure),
    /// The command's deadline passed; `last` is the last failure seen, if any.
    Deadline { last: Option<Failure> },
    /// A request that must not be sent twice (see [`Session::unary_at_most_once`]) reached a node
    /// and got no definitive answer: it may or may not have taken effect.
    OutcomeUnknown(Failure),
}

impl std::fmt::Display for GaveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GaveUp::Refused(failure) => write!(f, "{failure}"),
            GaveUp::Deadline { last: Some(last) } => {
                write!(f, "no answer before the deadline; last error: {last}")
            }
            GaveUp::Deadline { last: None } => write!(f, "no answer before the deadline"),
            GaveUp::OutcomeUnknown(failure) => write!(f, "{failure}; the outcome is unknown"),
        }
    }
}

/// One command's conversation with the cluster.
#[derive(Debug)]
pub struct Session {
    route: Route,
    deadline: Instant,
    last: Option<Failure>,
    /// The connection to the node that last answered, reused while it keeps answering.
    channel: Option<(String, Channel)>,
    identity: Identity,
}

impl Session {
    /// `nodes`: api addresses (`host:port`) in the order to try them.
    pub fn new(nodes: Vec<String>, timeout: Duration, identity: Identity) -> Self {
        Self { route: Route::new(nodes), deadline: Instant::now() + timeout, last: None, channel: None, identity }
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Connects to the node the route names next, waiting out any backoff first.
    pub async fn connect(&mut self) -> Result<(String, Client), GaveUp> {
        loop {
            let next = self.route.next_attempt();
            if Instant::now() + next.wait >= self.deadline {
                return Err(self.deadline_passed());
            }
            sleep_until(Instant::now() + next.wait).await;
            if let Some((addr, channel)) = &self.channel {
                if *addr == next.addr {
                    return Ok((next.addr, client(channel.clone())));
                }
            }
            match connect(&next.addr, self.deadline, &self.identity).await {
                Ok(channel) => {
                    self.channel = Some((next.addr.clone(), channel.clone()));
                    return Ok((next.addr, client(channel)));
                }
                Err(failure) => self.failed(failure)?,
            }
        }
    }

    /// Records an attempt that succeeded, so the next one goes to the same node.
    pub fn succeeded(&mut self, addr: &str) {
        self.route.succeeded(addr);
    }

    /// Records a failed attempt. Errs when the command should stop: a definitive answer, or the
    /// deadline has passed.
    pub fn failed(&mut self, failure: Failure) -> Result<(), GaveUp> {
        let decision = failure.decision();
        if decision == Decision::Stop {
            return Err(GaveUp::Refused(failure));
        }
        if matches!(decision, Decision::TryElsewhere | Decision::Redirect(_))
            && self.channel.as_ref().is_some_and(|(a, _)| a == failure.addr())
        {
            self.channel = None;
        }
        self.route.failed(failure.addr(), &decision);
        self.last = Some(failure);
        if Instant::now() >= self.deadline {
            return Err(self.deadline_passed());
        }
        Ok(())
    }

    pub fn deadline_passed(&mut self) -> GaveUp {
        GaveUp::Deadline { last: self.last.clone() }
    }

    /// Runs a unary request until a node answers it, following redirects.
    pub async fn unary<T, F, Fut>(&mut self, mut call: F) -> Result<T, GaveUp>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        loop {
            let (addr, client) = self.connect().await?;
            let limit = self.deadline.min(Instant::now() + UNARY_ATTEMPT_TIMEOUT);
            match timeout_at(limit, call(client)).await {
                Ok(Ok(reply)) => {
                    self.succeeded(&addr);
                    return Ok(reply.into_inner());
                }
                Ok(Err(status)) => self.failed(Failure::from_status(&addr, &status))?,
                Err(_) => self.failed(Failure::AttemptTimeout { addr })?,
            }
        }
    }
}

impl Session {
    /// Runs a unary request that must not take effect twice (a manual failover, a switchover):
    /// it is sent again only after failures that prove the node did nothing with it (no
    /// connection, `not-leader`); a refusal that proves it (`bad-request`, `unknown-tenant`) ends
    /// the command as usual. Any other failure after the request may have reached a node (no
    /// answer in time, `unavailable`, `internal`, a broken connection) ends the command with
    /// [`GaveUp::OutcomeUnknown`]. The attempt may take until
    /// the command's deadline: such operations legitimately wait (for a region to catch up, for
    /// an old leader's lease to expire), and cutting them short would leave their outcome open.
    pub async fn unary_at_most_once<T, F, Fut>(&mut self, mut call: F) -> Result<T, GaveUp>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        loop {
            let (addr, client) = self.connect().await?;
            let failure = match timeout_at(self.deadline, call(client)).await {
                Ok(Ok(reply)) => {
                    self.succeeded(&addr);
                    return Ok(reply.into_inner());
                }
                Ok(Err(status)) => Failure::from_status(&addr, &status),
                Err(_) => Failure::AttemptTimeout { addr },
            };
            // `unimplemented` comes from a node that lacks the call altogether: nothing happened.
            let unimplemented = matches!(failure, Failure::Transport { code: tonic::Code::Unimplemented, .. });
            if failure.may_have_stored() && !unimplemented {
                return Err(GaveUp::OutcomeUnknown(failure));
            }
            self.failed(failure)?;
        }
    }
}

/// Opens a connection to one node, giving up after [`CONNECT_TIMEOUT`] or at `deadline`.
pub async fn connect(addr: &str, deadline: Instant, identity: &Identity) -> Result<Channel, Failure> {
    let fail = |reason: String| Failure::Connect { addr: addr.to_owned(), reason };
    let endpoint = endpoint(addr, identity)
        .map_err(fail)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        // Notices a node that vanished mid-stream (a killed region) without waiting for the
        // command's deadline.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    let limit = deadline.min(Instant::now() + CONNECT_TIMEOUT);
    match timeout_at(limit, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(fail(error_chain(&e))),
        Err(_) => Err(fail("timed out".into())),
    }
}

pub fn client(channel: Channel) -> Client {
    TetradClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Asks one node for its status, without retries: used to probe whether a node answers at all.
pub async fn probe_status(
    addr: &str,
    timeout: Duration,
    identity: &Identity,
) -> Result<tetrad_proto::v1::StatusReply, Failure> {
    let deadline = Instant::now() + timeout;
    let mut c = client(connect(addr, deadline, identity).await?);
    match timeout_at(deadline, c.status(tetrad_proto::v1::StatusRequest {})).await {
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        Ok(Err(status)) => Err(Failure::from_status(addr, &status)),
        Err(_) => Err(Failure::AttemptTimeout { addr: addr.to_owned() }),
    }
}

/// tonic's transport errors hide the useful part (e.g. "Connection refused") in their sources.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
