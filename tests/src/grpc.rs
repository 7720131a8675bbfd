//! A small gRPC client that pushes segments without starting a `tetradctl` process per segment,
//! for tests that push thousands. It follows the API contract of proto/tetrad.proto on its own
//! (it shares no code with tetradctl): a `not-leader` answer is followed to `tetrad-leader-api`
//! (or to the next node), `unavailable` and `outcome-unknown` are retried on the same node (a push
//! is idempotent), an answer without `tetrad-error` metadata came from the transport and moves
//! on to the next node, and every other kind is definitive. It connects with tetradctl's
//! [`endpoint`] (TLS, presenting an [`Identity`]), the one connect helper every client shares.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tetrad_ops::client::{endpoint, Identity};
use tetrad_proto::v1::push_wal_request::Msg;
use tetrad_proto::v1::tetrad_client::TetradClient;
use tetrad_proto::v1::{PushHeader, PushWalReply, PushWalRequest};
use tetrad_proto::{ERROR_KIND_KEY, LEADER_API_KEY};
use tokio::time::{sleep, timeout_at, Instant};
use tonic::transport::Channel;

/// Bytes per data message, as tetradctl sends them.
const DATA_MESSAGE_BYTES: usize = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long one attempt on one node may take before the next node is tried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(4);

/// An acked push.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub reply: PushWalReply,
    /// The failed attempts before the ack, `not-leader` redirects included.
    pub failed_attempts: Vec<String>,
    /// Whether an earlier attempt may have stored the segment (it ended without a definitive
    /// answer): only then may the ack say "already present".
    pub maybe_stored_before: bool,
}

/// Why a push did not succeed.
#[derive(Debug, Clone)]
pub enum PushError {
    /// A node answered definitively (e.g. `segment-conflict`, `unknown-tenant`, `internal`).
    Refused { kind: String, message: String },
    /// No definitive answer before the deadline; the push's outcome is unknown.
    Deadline { last: String },
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::Refused { kind, message } => write!(f, "refused ({kind}): {message}"),
            PushError::Deadline { last } => write!(f, "no definitive answer before the deadline; last: {last}"),
        }
    }
}

/// Pushes to a cluster, remembering the last node that acked so that the next push goes there
/// first. Cheap to share between tasks (`&Pusher`).
pub struct Pusher {
    addrs: Vec<String>,
    max_backoff: Duration,
    channels: Mutex<HashMap<String, Channel>>,
    leader_hint: Mutex<Option<String>>,
    identity: Identity,
}

impl Pusher {
    /// `addrs`: every node's API address (`host:port`); `identity`: the client certificate to
    /// present (e.g. [`crate::LocalCluster::identity`]).
    pub fn new(addrs: Vec<String>, identity: Identity) -> Self {
        assert!(!addrs.is_empty(), "a pusher needs at least one node address");
        Self {
            addrs,
            max_backoff: MAX_BACKOFF,
            channels: Mutex::new(HashMap::new()),
            leader_hint: Mutex::new(None),
            identity,
        }
    }

    /// Caps the backoff between retries at `max` instead of 1 s: a writer that measures how soon
    /// a new leader acks (the RTO bench) must not notice it late.
    pub fn with_max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }

    async fn channel(&self, addr: &str) -> Result<Channel, String> {
        if let Some(c) = self.channels.lock().expect("channels lock").get(addr) {
            return Ok(c.clone());
        }
        let endpoint = endpoint(addr, &self.identity)?;
        // The bound covers the TLS handshake too, which `connect_timeout` does not: a frozen node's
        // kernel still accepts the TCP connection, and the handshake then waits for ever.
        let endpoint = endpoint.connect_timeout(CONNECT_TIMEOUT);
        let connecting = endpoint.connect();
        let channel = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| format!("{addr}: no TLS handshake within {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| format!("{addr}: {e}"))?;
        self.channels.lock().expect("channels lock").insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }

    fn forget(&self, addr: &str) {
        self.channels.lock().expect("channels lock").remove(addr);
    }

    fn next_addr(&self, after: &str) -> String {
        let i = self.addrs.iter().position(|a| a == after).map_or(0, |i| i + 1);
        self.addrs[i % self.addrs.len()].clone()
    }

    /// Pushes one segment and waits for the ack, retrying until `bound` has passed.
    pub async fn push(&self, tenant: &str, name: &str, data: &[u8], bound: Duration) -> Result<Pushed, PushError> {
        let deadline = Instant::now() + bound;
        let hint = self.leader_hint.lock().expect("hint lock").clone();
        let mut addr = hint.unwrap_or_else(|| self.addrs[0].clone());
        let mut backoff = Duration::from_millis(50);
        let mut last = String::from("no attempt finished");
        let mut failed_attempts = Vec::new();
        let mut maybe_stored_before = false;
        let mut unavailable_here = 0;
        loop {
            if Instant::now() >= deadline {
                return Err(PushError::Deadline { last });
            }
            let channel = match self.channel(&addr).await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    addr = self.next_addr(&addr);
                    sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let mut client = TetradClient::new(channel);
            let header = PushWalRequest {
                msg: Some(Msg::Header(PushHeader {
                    tenant: tenant.to_owned(),
                    name: name.to_owned(),
                    size: data.len() as u64,
                    blake3: blake3::hash(data).to_hex().to_string(),
                    chunks: Vec::new(),
                })),
            };
            let body = data.chunks(DATA_MESSAGE_BYTES).map(|c| PushWalRequest { msg: Some(Msg::Data(c.to_vec())) });
            let messages: Vec<PushWalRequest> = std::iter::once(header).chain(body).collect();
            // One attempt may hang on a node that is frozen or cut off: give up on it after
            // ATTEMPT_TIMEOUT and try the next node (the outcome of the abandoned attempt is
            // unknown, and repeating the same push is idempotent).
            let attempt_deadline = deadline.min(Instant::now() + ATTEMPT_TIMEOUT);
            let status = match timeout_at(attempt_deadline, client.push_wal(futures::stream::iter(messages))).await {
                Ok(Ok(reply)) => {
                    *self.leader_hint.lock().expect("hint lock") = Some(addr);
                    return Ok(Pushed { reply: reply.into_inner(), failed_attempts, maybe_stored_before });
                }
                Ok(Err(status)) => status,
                Err(_) if Instant::now() >= deadline => {
                    return Err(PushError::Deadline { last: format!("the attempt on {addr} was still running") })
                }
                Err(_) => {
                    last = format!("{addr}: no answer within {ATTEMPT_TIMEOUT:?}");
                    failed_attempts.push(last.clone());
                    maybe_stored_before = true;
                    self.forget(&addr);
                    *self.leader_hint.lock().expect("hint lock") = None;
                    addr = self.next_addr(&addr);
                    continue;
                }
            };
            let kind = status.metadata().get(ERROR_KIND_KEY).and_then(|v| v.to_str().ok()).map(str::to_owned);
            last = format!(
                "{addr}: {:?} {} ({})",
                status.code(),
                status.message(),
                kind.as_deref().unwrap_or("transport")
            );
            failed_attempts.push(last.clone());
            match kind.as_deref() {
                Some("not-leader") => {
                    let leader = status.metadata().get(LEADER_API_KEY).and_then(|v| v.to_str().ok()).map(str::to_owned);
                    addr = match leader {
                        Some(l) if l != addr => l,
                        _ => {
                            sleep(backoff).await;
                            backoff = (backoff * 2).min(self.max_backoff);
                            self.next_addr(&addr)
                        }
                    };
                }
                Some("unavailable" | "outcome-unknown") => {
                    maybe_stored_before = true;
                    sleep(backoff).await;
                    backoff = (backoff * 2).min(self.max_backoff);
                    // As tetradctl does (ops/src/route.rs): a node that keeps refusing (a leader
                    // cut off with its lease lapsed) is left for the others after two answers.
                    unavailable_here += 1;
                    if unavailable_here >= 2 {
                        unavailable_here = 0;
                        *self.leader_hint.lock().expect("hint lock") = None;
                        addr = self.next_addr(&addr);
                    }
                }
                Some(other) => {
                    return Err(PushError::Refused { kind: other.to_owned(), message: status.message().to_owned() });
                }
                None => {
                    maybe_stored_before = true;
                    self.forget(&addr);
                    addr = self.next_addr(&addr);
                    sleep(backoff).await;
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
    }
}
