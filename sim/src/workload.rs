//! Simulated clients: they push WAL segments and remember exactly which pushes were acked, when,
//! and with what bytes. A push that got no answer is retried with the same bytes (pushes are
//! idempotent) and counts only once acked.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tetrad_node::node::{ApiError, Node};
use tetrad_node::seams::net::NodeId;

use crate::trace::Trace;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    pub tenant: String,
    pub name: String,
    pub blake3: [u8; 32],
    pub size: u64,
    /// Simulated time of the ack, ms since the run started.
    pub acked_at_ms: u64,
    pub epoch: u64,
}

#[derive(Clone, Default)]
pub struct AckLog {
    inner: Arc<Mutex<Vec<Ack>>>,
}

impl AckLog {
    pub fn push(&self, a: Ack) {
        self.inner.lock().expect("ack log").push(a);
    }
    pub fn all(&self) -> Vec<Ack> {
        self.inner.lock().expect("ack log").clone()
    }
}

pub struct ClientSpec {
    pub id: u32,
    pub tenant: String,
    pub seed: u64,
    pub min_bytes: usize,
    pub max_bytes: usize,
    /// Pause between one ack and the next push.
    pub think: Duration,
}

/// Picks the node to ask: the hinted leader if it runs, else the first running node after it.
fn pick(handles: &Arc<Mutex<BTreeMap<NodeId, Node>>>, hint: NodeId) -> Option<(NodeId, Node)> {
    let h = handles.lock().expect("handles lock");
    h.range(hint..).next().or_else(|| h.iter().next()).map(|(k, v)| (*k, v.clone()))
}

fn next_after(handles: &Arc<Mutex<BTreeMap<NodeId, Node>>>, id: NodeId) -> NodeId {
    let h = handles.lock().expect("handles lock");
    h.range(id + 1..).next().or_else(|| h.iter().next()).map(|(k, _)| *k).unwrap_or(id)
}

/// Runs one client until `stop` flips; returns how many pushes it abandoned unacked.
pub async fn run_client(
    spec: ClientSpec,
    handles: Arc<Mutex<BTreeMap<NodeId, Node>>>,
    acks: AckLog,
    trace: Trace,
    origin: tokio::time::Instant,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> u64 {
    let mut rng = SmallRng::seed_from_u64(spec.seed);
    let mut hint: NodeId = 0;
    let mut seq: u64 = 0;
    let mut abandoned = 0;
    'outer: loop {
        seq += 1;
        let size = rng.random_range(spec.min_bytes..=spec.max_bytes);
        let mut data = vec![0u8; size];
        rng.fill(&mut data[..]);
        let name = format!("c{:02}-{:010}", spec.id, seq);
        let hash = *blake3::hash(&data).as_bytes();
        loop {
            if *stop.borrow() {
                abandoned += 1;
                break 'outer;
            }
            let Some((id, node)) = pick(&handles, hint) else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let r =
                tokio::time::timeout(Duration::from_secs(10), node.push(&spec.tenant, &name, hash, data.clone())).await;
            match r {
                Ok(Ok(out)) => {
                    let at = origin.elapsed().as_millis() as u64;
                    trace.event(&format!("ack {} {} e{} t{} i{}", spec.tenant, name, out.epoch, out.term, out.index));
                    acks.push(Ack {
                        tenant: spec.tenant.clone(),
                        name: name.clone(),
                        blake3: hash,
                        size: size as u64,
                        acked_at_ms: at,
                        epoch: out.epoch,
                    });
                    hint = id;
                    break;
                }
                Ok(Err(ApiError::NotLeader { leader: Some(l) })) if l != id => {
                    // Follow the redirect, but let simulated time pass: a stale hint naming a
                    // dead leader must not turn into a loop that never yields.
                    hint = l;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(Err(ApiError::Conflict { .. }))
                | Ok(Err(ApiError::BadRequest(_)))
                | Ok(Err(ApiError::UnknownTenant(_))) => {
                    // A client bug or a lost tenant: nothing to retry.
                    trace.event(&format!("client {} gave up on {name}: {:?}", spec.id, r));
                    abandoned += 1;
                    break;
                }
                _ => {
                    hint = next_after(&handles, id);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(spec.think) => {}
            _ = stop.changed() => {}
        }
    }
    abandoned
}
