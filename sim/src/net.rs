//! The simulated network: the same encoded bytes production sends over QUIC, carried in memory
//! between regions with a one-way latency matrix, jitter, loss, partitions and dead nodes.
//!
//! Every decision (jitter, loss) is drawn from the run's seeded generator and every delivery
//! feeds the run's trace hash, so two runs of a seed deliver the same bytes at the same
//! simulated instants.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tetrad_node::seams::net::{NetError, NodeId, RpcHandlerRef, Transport};

use crate::trace::Trace;

/// The default one-way latencies (ms) between eu-central, eu-west, us-east and ap-south: about
/// 10 ms round trip inside Europe, 85 ms Europe to US east, 135 ms Europe to Asia-Pacific south
/// and 200 ms US east to Asia-Pacific south.
pub const DEFAULT_ONE_WAY_MS: [[u64; 4]; 4] = [[1, 5, 42, 68], [5, 1, 43, 72], [42, 43, 1, 100], [68, 72, 100, 1]];

#[derive(Clone, Debug, Default)]
pub struct LinkFaults {
    /// Probability that one message (request or reply) is lost.
    pub loss: f64,
    /// Extra random delay up to this many ms per message.
    pub jitter_ms: u64,
}

struct NetState {
    handlers: BTreeMap<NodeId, RpcHandlerRef>,
    region: BTreeMap<NodeId, usize>,
    one_way_ms: Vec<Vec<u64>>,
    /// Directed region pairs that cannot talk: (from, to).
    cut: BTreeSet<(usize, usize)>,
    /// Nodes that are crashed or paused: nothing reaches them.
    unreachable: BTreeSet<NodeId>,
    faults: LinkFaults,
    rng: SmallRng,
    delivered: u64,
    dropped: u64,
}

#[derive(Clone)]
pub struct SimNet {
    state: Arc<Mutex<NetState>>,
    trace: Trace,
}

impl SimNet {
    pub fn new(seed: u64, one_way_ms: Vec<Vec<u64>>, trace: Trace) -> Self {
        Self {
            state: Arc::new(Mutex::new(NetState {
                handlers: BTreeMap::new(),
                region: BTreeMap::new(),
                one_way_ms,
                cut: BTreeSet::new(),
                unreachable: BTreeSet::new(),
                faults: LinkFaults::default(),
                rng: SmallRng::seed_from_u64(seed ^ 0x6e65_7477_6f72_6b00),
                delivered: 0,
                dropped: 0,
            })),
            trace,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().expect("sim net lock")
    }

    pub fn add_node(&self, id: NodeId, region: usize) {
        self.lock().region.insert(id, region);
    }

    pub fn attach(&self, id: NodeId, handler: RpcHandlerRef) {
        let mut s = self.lock();
        s.handlers.insert(id, handler);
        s.unreachable.remove(&id);
    }

    /// A crashed node: its handler is gone and nothing reaches it.
    pub fn detach(&self, id: NodeId) {
        let mut s = self.lock();
        s.handlers.remove(&id);
        s.unreachable.insert(id);
    }

    pub fn set_reachable(&self, id: NodeId, reachable: bool) {
        let mut s = self.lock();
        if reachable {
            s.unreachable.remove(&id);
        } else {
            s.unreachable.insert(id);
        }
    }

    /// Cuts traffic from region `from` to region `to` (one direction).
    pub fn cut(&self, from: usize, to: usize) {
        self.lock().cut.insert((from, to));
    }

    pub fn heal_cuts(&self) {
        self.lock().cut.clear();
    }

    pub fn set_faults(&self, f: LinkFaults) {
        self.lock().faults = f;
    }

    pub fn counts(&self) -> (u64, u64) {
        let s = self.lock();
        (s.delivered, s.dropped)
    }

    pub fn transport_for(&self, me: NodeId) -> Arc<SimTransport> {
        Arc::new(SimTransport { net: self.clone(), me })
    }

    /// Decides one hop: `None` when the message is lost, else its delay.
    fn hop(&self, from: NodeId, to: NodeId) -> Option<Duration> {
        let mut s = self.lock();
        let (Some(&rf), Some(&rt)) = (s.region.get(&from), s.region.get(&to)) else {
            return None;
        };
        if s.cut.contains(&(rf, rt)) || s.unreachable.contains(&to) || s.unreachable.contains(&from) {
            s.dropped += 1;
            return None;
        }
        let loss = s.faults.loss;
        if loss > 0.0 && s.rng.random::<f64>() < loss {
            s.dropped += 1;
            return None;
        }
        let j = s.faults.jitter_ms;
        let jitter = if j > 0 { s.rng.random_range(0..=j) } else { 0 };
        let base = s.one_way_ms[rf][rt];
        Some(Duration::from_millis(base + jitter))
    }
}

pub struct SimTransport {
    net: SimNet,
    me: NodeId,
}

impl Transport for SimTransport {
    fn call(&self, to: NodeId, request: Bytes, timeout: Duration) -> BoxFuture<'static, Result<Bytes, NetError>> {
        let net = self.net.clone();
        let from = self.me;
        Box::pin(async move {
            let exchange = async {
                let Some(d) = net.hop(from, to) else {
                    return std::future::pending::<Result<Bytes, NetError>>().await;
                };
                tokio::time::sleep(d).await;
                let handler = net.lock().handlers.get(&to).cloned();
                let Some(handler) = handler else {
                    return std::future::pending().await;
                };
                if net.lock().unreachable.contains(&to) {
                    return std::future::pending().await;
                }
                let reply = handler.handle(from, request.clone()).await;
                let Some(back) = net.hop(to, from) else {
                    return std::future::pending().await;
                };
                tokio::time::sleep(back).await;
                net.lock().delivered += 1;
                net.trace.message(from, to, &request, &reply);
                Ok(reply)
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(r) => r,
                Err(_) => Err(NetError::Timeout(to, timeout)),
            }
        })
    }
}
