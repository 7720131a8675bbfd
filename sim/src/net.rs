//! The simulated network: the same encoded bytes production sends over QUIC, carried in memory
//! between regions with a one-way latency matrix, and the network faults the simulator injects:
//! loss, jitter, reordering, duplication, latency spikes on region pairs, region cuts (one-way or
//! both ways) and unreachable (crashed or paused) nodes.
//!
//! Every decision is drawn from the run's seeded generator and every delivery feeds the run's
//! trace hash, so two runs of a seed deliver the same bytes at the same simulated instants.
//!
//! A lost message is not silently waited on forever: QUIC retransmits lost packets (a
//! `retransmit` here is a delay), and a connection whose peer went silent (crashed, paused, cut
//! off) fails after the transport's idle timeout. So a call whose request or reply is lost ends
//! with an error after [`IDLE_TIMEOUT`], or at its own deadline if that comes first.
//!
//! Each transport belongs to one life of a node: a crash or pause ends the life, and a message
//! that life sent is dropped when it would arrive, as are its late replies. So a crashed node's
//! packets never outlive it (dropping is always allowed: the network may lose anything), and a
//! zombie task of a crashed node can never speak for its restarted successor.

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

/// How long a call whose message was lost waits before it fails, as the production QUIC
/// transport's keep-alives and idle timeout make it (`node/src/net/quic.rs`).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Faults on every link, drawn per message.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkFaults {
    /// Probability that one message (request or reply) is lost.
    pub loss: f64,
    /// Extra random delay up to this many ms per message.
    pub jitter_ms: u64,
    /// Probability that a request is delivered a second time, later (its second reply is lost).
    pub duplicate: f64,
    /// Probability that a message is held back by up to `reorder_ms`, so later ones overtake it.
    pub reorder: f64,
    pub reorder_ms: u64,
    /// Probability that a message needs a retransmission: 200 ms to 1 s more.
    pub retransmit: f64,
}

impl LinkFaults {
    pub fn is_calm(&self) -> bool {
        *self == LinkFaults::default()
    }
}

/// Message counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounts {
    pub delivered: u64,
    pub dropped: u64,
    pub duplicated: u64,
}

struct NetState {
    handlers: BTreeMap<NodeId, RpcHandlerRef>,
    region: BTreeMap<NodeId, usize>,
    one_way_ms: Vec<Vec<u64>>,
    /// Directed region pairs that cannot talk: (from, to).
    cut: BTreeSet<(usize, usize)>,
    /// Extra one-way latency on directed region pairs (latency spikes).
    slow: BTreeMap<(usize, usize), u64>,
    /// Bandwidth caps (bytes per second) on directed region pairs (a congested WAN): a message
    /// takes its size over the cap on top of the latency. Streams do not wait for each other
    /// (as QUIC's do not), so a small message is not held up behind a large one.
    bandwidth: BTreeMap<(usize, usize), u64>,
    /// Nodes that are crashed or paused: nothing reaches them and nothing leaves them.
    unreachable: BTreeSet<NodeId>,
    /// The current life of each node; a transport of an older life is dead.
    life: BTreeMap<NodeId, u64>,
    faults: LinkFaults,
    rng: SmallRng,
    counts: NetCounts,
}

#[derive(Clone)]
pub struct SimNet {
    state: Arc<Mutex<NetState>>,
    trace: Trace,
}

/// How one hop goes: lost, or delivered after a delay (and maybe duplicated after another).
struct Hop {
    delay: Duration,
    duplicate_after: Option<Duration>,
}

impl SimNet {
    pub fn new(seed: u64, one_way_ms: Vec<Vec<u64>>, trace: Trace) -> Self {
        Self {
            state: Arc::new(Mutex::new(NetState {
                handlers: BTreeMap::new(),
                region: BTreeMap::new(),
                one_way_ms,
                cut: BTreeSet::new(),
                slow: BTreeMap::new(),
                bandwidth: BTreeMap::new(),
                unreachable: BTreeSet::new(),
                life: BTreeMap::new(),
                faults: LinkFaults::default(),
                rng: SmallRng::seed_from_u64(seed ^ 0x6e65_7477_6f72_6b00),
                counts: NetCounts::default(),
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

    /// A node (re)starts: a new life begins, with `handler` answering its requests.
    pub fn attach(&self, id: NodeId, handler: RpcHandlerRef) {
        let mut s = self.lock();
        s.handlers.insert(id, handler);
        s.unreachable.remove(&id);
        *s.life.entry(id).or_insert(0) += 1;
    }

    /// A crashed node: its handler is gone, nothing reaches it, and its messages in flight die.
    pub fn detach(&self, id: NodeId) {
        let mut s = self.lock();
        s.handlers.remove(&id);
        s.unreachable.insert(id);
        *s.life.entry(id).or_insert(0) += 1;
    }

    /// A paused node keeps its handler and life but nothing reaches it or leaves it meanwhile.
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

    /// Removes every cut into or out of `region`.
    pub fn heal_region(&self, region: usize) {
        self.lock().cut.retain(|(a, b)| *a != region && *b != region);
    }

    /// Whether a client in region `client` can reach node `to` and hear back: no cut either way
    /// between the two regions and the node reachable. Clients are not nodes, but they live in a
    /// region and talk over the same WAN, so a region that is cut off is cut off for them too.
    pub fn client_reaches(&self, client: usize, to: NodeId) -> bool {
        let s = self.lock();
        let Some(&rt) = s.region.get(&to) else { return false };
        !s.unreachable.contains(&to) && !s.cut.contains(&(client, rt)) && !s.cut.contains(&(rt, client))
    }

    pub fn heal_cuts(&self) {
        self.lock().cut.clear();
    }

    /// Adds `extra_ms` to the one-way latency between regions `a` and `b` (both directions); 0
    /// ends the spike.
    pub fn set_slow(&self, a: usize, b: usize, extra_ms: u64) {
        let mut s = self.lock();
        for k in [(a, b), (b, a)] {
            if extra_ms == 0 {
                s.slow.remove(&k);
            } else {
                s.slow.insert(k, extra_ms);
            }
        }
    }

    /// Caps the bandwidth from region `from` to region `to` at `bytes_per_sec` (None: no cap).
    pub fn set_bandwidth(&self, from: usize, to: usize, bytes_per_sec: Option<u64>) {
        let mut s = self.lock();
        match bytes_per_sec {
            Some(b) => s.bandwidth.insert((from, to), b.max(1)),
            None => s.bandwidth.remove(&(from, to)),
        };
    }

    pub fn set_faults(&self, f: LinkFaults) {
        self.lock().faults = f;
    }

    /// Back to a calm network: no link faults, no spikes, no cuts.
    pub fn calm(&self) {
        let mut s = self.lock();
        s.faults = LinkFaults::default();
        s.slow.clear();
        s.cut.clear();
    }

    pub fn counts(&self) -> NetCounts {
        self.lock().counts
    }

    /// A transport for the current life of `me` (call after [`SimNet::attach`]).
    pub fn transport_for(&self, me: NodeId) -> Arc<SimTransport> {
        let life = self.lock().life.get(&me).copied().unwrap_or(0);
        Arc::new(SimTransport { net: self.clone(), me, life })
    }

    /// Decides one hop: `None` when the message is lost.
    fn hop(&self, from: NodeId, to: NodeId, request: bool, bytes: usize) -> Option<Hop> {
        let mut s = self.lock();
        let (Some(&rf), Some(&rt)) = (s.region.get(&from), s.region.get(&to)) else {
            return None;
        };
        if s.cut.contains(&(rf, rt)) || s.unreachable.contains(&to) || s.unreachable.contains(&from) {
            s.counts.dropped += 1;
            return None;
        }
        let f = s.faults.clone();
        if f.loss > 0.0 && s.rng.random::<f64>() < f.loss {
            s.counts.dropped += 1;
            return None;
        }
        let mut ms = s.one_way_ms[rf][rt] + s.slow.get(&(rf, rt)).copied().unwrap_or(0);
        if let Some(bw) = s.bandwidth.get(&(rf, rt)) {
            ms += bytes as u64 * 1000 / bw;
        }
        if f.jitter_ms > 0 {
            ms += s.rng.random_range(0..=f.jitter_ms);
        }
        if f.reorder > 0.0 && f.reorder_ms > 0 && s.rng.random::<f64>() < f.reorder {
            ms += s.rng.random_range(1..=f.reorder_ms);
        }
        if f.retransmit > 0.0 && s.rng.random::<f64>() < f.retransmit {
            ms += s.rng.random_range(200..=1_000);
        }
        let duplicate_after = if request && f.duplicate > 0.0 && s.rng.random::<f64>() < f.duplicate {
            s.counts.duplicated += 1;
            Some(Duration::from_millis(ms + s.rng.random_range(1..=50u64)))
        } else {
            None
        };
        Some(Hop { delay: Duration::from_millis(ms), duplicate_after })
    }

    /// Whether a message of `from`'s life `life` may arrive at `to` now; then `to`'s handler and
    /// its life.
    fn arrive(&self, from: NodeId, life: u64, to: NodeId) -> Option<(RpcHandlerRef, u64)> {
        let mut s = self.lock();
        let ok = s.life.get(&from) == Some(&life) && !s.unreachable.contains(&from) && !s.unreachable.contains(&to);
        let cut = match (s.region.get(&from), s.region.get(&to)) {
            (Some(&rf), Some(&rt)) => s.cut.contains(&(rf, rt)),
            _ => true,
        };
        match s.handlers.get(&to).cloned() {
            Some(h) if ok && !cut => Some((h, s.life.get(&to).copied().unwrap_or(0))),
            _ => {
                s.counts.dropped += 1;
                None
            }
        }
    }

    /// Whether a reply from `to` (life `to_life`) may reach `from` (life `life`) now.
    fn reply_arrives(&self, from: NodeId, life: u64, to: NodeId, to_life: u64) -> bool {
        let mut s = self.lock();
        let ok = s.life.get(&from) == Some(&life)
            && s.life.get(&to) == Some(&to_life)
            && !s.unreachable.contains(&from)
            && !s.unreachable.contains(&to);
        let cut = match (s.region.get(&to), s.region.get(&from)) {
            (Some(&rt), Some(&rf)) => s.cut.contains(&(rt, rf)),
            _ => true,
        };
        if ok && !cut {
            s.counts.delivered += 1;
            true
        } else {
            s.counts.dropped += 1;
            false
        }
    }
}

pub struct SimTransport {
    net: SimNet,
    me: NodeId,
    life: u64,
}

impl Transport for SimTransport {
    fn call(&self, to: NodeId, request: Bytes, timeout: Duration) -> BoxFuture<'static, Result<Bytes, NetError>> {
        let net = self.net.clone();
        let (from, life) = (self.me, self.life);
        Box::pin(async move {
            let start = tokio::time::Instant::now();
            let exchange = async {
                let hop = net.hop(from, to, true, request.len())?;
                if let Some(later) = hop.duplicate_after {
                    // The copy is answered too, and its answer lost: handlers must be idempotent.
                    let (net, request) = (net.clone(), request.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(later).await;
                        if let Some((handler, _)) = net.arrive(from, life, to) {
                            let _ = handler.handle(from, request).await;
                        }
                    });
                }
                tokio::time::sleep(hop.delay).await;
                let (handler, to_life) = net.arrive(from, life, to)?;
                let reply = handler.handle(from, request.clone()).await;
                let back = net.hop(to, from, false, reply.len())?;
                tokio::time::sleep(back.delay).await;
                if !net.reply_arrives(from, life, to, to_life) {
                    return None;
                }
                net.trace.message(from, to, &request, &reply);
                Some(reply)
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(Some(reply)) => Ok(reply),
                Ok(None) if timeout > IDLE_TIMEOUT => {
                    tokio::time::sleep_until(start + IDLE_TIMEOUT).await;
                    Err(NetError::Closed(to, "the connection went idle: the peer stopped answering".into()))
                }
                Ok(None) => {
                    tokio::time::sleep_until(start + timeout).await;
                    Err(NetError::Timeout(to, timeout))
                }
                Err(_) => Err(NetError::Timeout(to, timeout)),
            }
        })
    }
}
