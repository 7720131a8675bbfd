//! A gRPC push client for the benches, so that a writer pushes without starting a `tetradctl`
//! process per segment. It follows the API contract of proto/tetrad.proto the way
//! `tests/src/grpc.rs` does (copied rather than shared, so the bench does not depend on the test
//! crate): a `not-leader` answer is followed to `tetrad-leader-api` (or to the next node),
//! `unavailable` and `outcome-unknown` are retried on the same node (a push is idempotent), an
//! answer without `tetrad-error` metadata came from the transport and moves on to the next node,
//! every other kind is definitive, and one attempt that hangs is abandoned after
//! [`ATTEMPT_TIMEOUT`] for the next node. Only the backoff differs (see [`MAX_BACKOFF`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tetrad_proto::v1::push_wal_request::Msg;
use tetrad_proto::v1::tetrad_client::TetradClient;
use tetrad_proto::v1::{PushHeader, PushWalReply, PushWalRequest};
use tetrad_proto::{ERROR_KIND_KEY, LEADER_API_KEY};
use tokio::time::{sleep, timeout_at, Instant};
use tonic::transport::{Channel, Endpoint};

/// Bytes per data message, as tetradctl sends them.
const DATA_MESSAGE_BYTES: usize = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Lower than the tests' 1 s and tetradctl's 2 s: the backoff bounds how late the writer notices
/// that a new leader acks, so it bounds the resolution of a measured RTO.
const MAX_BACKOFF: Duration = Duration::from_millis(250);
/// How long one attempt on one node may take before the next node is tried.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(4);

/// Pushes to a cluster, remembering the last node that acked so that the next push goes there
/// first.
pub struct Pusher {
    addrs: Vec<String>,
    channels: Mutex<HashMap<String, Channel>>,
    leader_hint: Mutex<Option<String>>,
}

impl Pusher {
    /// `addrs`: every node's API address (`host:port`).
    pub fn new(addrs: Vec<String>) -> Self {
        assert!(!addrs.is_empty(), "a pusher needs at least one node address");
        Self { addrs, channels: Mutex::new(HashMap::new()), leader_hint: Mutex::new(None) }
    }

    async fn channel(&self, addr: &str) -> Result<Channel, String> {
        if let Some(c) = self.channels.lock().expect("channels lock").get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|e| e.to_string())?;
        let channel = endpoint.connect_timeout(CONNECT_TIMEOUT).connect().await.map_err(|e| format!("{addr}: {e}"))?;
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

    /// Pushes one segment and waits for its ack, retrying until `bound` has passed. The error
    /// says what the last attempt saw.
    pub async fn push(&self, tenant: &str, name: &str, data: &[u8], bound: Duration) -> Result<PushWalReply, String> {
        let deadline = Instant::now() + bound;
        let hint = self.leader_hint.lock().expect("hint lock").clone();
        let mut addr = hint.unwrap_or_else(|| self.addrs[0].clone());
        let mut backoff = MIN_BACKOFF;
        let mut last = String::from("no attempt finished");
        let blake3 = blake3::hash(data).to_hex().to_string();
        loop {
            if Instant::now() >= deadline {
                return Err(format!("no ack within {bound:?}; last: {last}"));
            }
            let channel = match self.channel(&addr).await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    addr = self.next_addr(&addr);
                    sleep(MIN_BACKOFF).await;
                    continue;
                }
            };
            let mut client = TetradClient::new(channel);
            let header = PushWalRequest {
                msg: Some(Msg::Header(PushHeader {
                    tenant: tenant.to_owned(),
                    name: name.to_owned(),
                    size: data.len() as u64,
                    blake3: blake3.clone(),
                })),
            };
            let body = data.chunks(DATA_MESSAGE_BYTES).map(|c| PushWalRequest { msg: Some(Msg::Data(c.to_vec())) });
            let messages: Vec<PushWalRequest> = std::iter::once(header).chain(body).collect();
            // An attempt may hang on a node that is frozen or cut off: give up on it and try the
            // next node (repeating the same push is idempotent).
            let attempt_deadline = deadline.min(Instant::now() + ATTEMPT_TIMEOUT);
            let stream = tonic::codegen::tokio_stream::iter(messages);
            let status = match timeout_at(attempt_deadline, client.push_wal(stream)).await {
                Ok(Ok(reply)) => {
                    *self.leader_hint.lock().expect("hint lock") = Some(addr);
                    return Ok(reply.into_inner());
                }
                Ok(Err(status)) => status,
                Err(_) => {
                    last = format!("{addr}: no answer within {ATTEMPT_TIMEOUT:?}");
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
            match kind.as_deref() {
                Some("not-leader") => {
                    let leader = status.metadata().get(LEADER_API_KEY).and_then(|v| v.to_str().ok()).map(str::to_owned);
                    addr = match leader {
                        Some(l) if l != addr => l,
                        _ => {
                            sleep(backoff).await;
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                            self.next_addr(&addr)
                        }
                    };
                }
                Some("unavailable" | "outcome-unknown") => {
                    sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Some(_) => return Err(format!("refused: {last}")),
                None => {
                    self.forget(&addr);
                    addr = self.next_addr(&addr);
                    sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
