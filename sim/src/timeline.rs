//! What happened in a run, in simulated time: node and region states, network and clock faults,
//! the tenant's leader and replication lag as sampled, and a text log of every fault. The summary
//! and the HTML report are drawn from it. Times are ms since the run started.

use std::sync::{Arc, Mutex};

use tetrad_node::seams::net::NodeId;

/// One sample of replication lag: for each region, the writes it lacks and how old the oldest
/// missing write is (seconds), as the tenant's leader reports.
#[derive(Clone, Debug, PartialEq)]
pub struct LagSample {
    pub at_ms: u64,
    pub regions: Vec<(String, u64, f64)>,
}

#[derive(Clone, Debug, Default)]
pub struct TimelineData {
    /// (at, node, state): `up`, `crashed`, `stopped`, `paused`, `wiped`, `replaced`.
    pub node_states: Vec<(u64, NodeId, String)>,
    /// (at, region, cut): `both`, `out` (cannot send), `in` (cannot receive), or `None` (healed).
    pub region_cuts: Vec<(u64, usize, Option<String>)>,
    /// (at, description of link faults or `None` when calm).
    pub net: Vec<(u64, Option<String>)>,
    /// (at, node, wall offset ms, rate ppm).
    pub clocks: Vec<(u64, NodeId, i64, i64)>,
    /// (at, text): every fault and heal, in order.
    pub log: Vec<(u64, String)>,
    /// (at, leader, term) of the tenant group, on every change.
    pub leaders: Vec<(u64, Option<NodeId>, u64)>,
    pub lag: Vec<LagSample>,
    /// Instants at which a fault took the tenant's leader or a region away (for RTO).
    pub disruptions: Vec<u64>,
}

#[derive(Clone)]
pub struct Timeline {
    inner: Arc<Mutex<TimelineData>>,
    origin: tokio::time::Instant,
}

impl Timeline {
    pub fn new(origin: tokio::time::Instant) -> Self {
        Self { inner: Arc::default(), origin }
    }

    pub fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut TimelineData) -> R) -> R {
        f(&mut self.inner.lock().expect("timeline lock"))
    }

    pub fn data(&self) -> TimelineData {
        self.with(|d| d.clone())
    }

    pub fn log(&self, text: String) {
        let t = self.now_ms();
        self.with(|d| d.log.push((t, text)));
    }

    pub fn node_state(&self, id: NodeId, state: &str) {
        let t = self.now_ms();
        self.with(|d| d.node_states.push((t, id, state.to_string())));
    }

    pub fn region_cut(&self, region: usize, cut: Option<&str>) {
        let t = self.now_ms();
        self.with(|d| d.region_cuts.push((t, region, cut.map(str::to_string))));
    }

    pub fn net(&self, what: Option<String>) {
        let t = self.now_ms();
        self.with(|d| d.net.push((t, what)));
    }

    pub fn clock(&self, id: NodeId, offset_ms: i64, rate_ppm: i64) {
        let t = self.now_ms();
        self.with(|d| d.clocks.push((t, id, offset_ms, rate_ppm)));
    }

    pub fn disruption(&self) {
        let t = self.now_ms();
        self.with(|d| d.disruptions.push(t));
    }

    /// Records the tenant's leader if it changed.
    pub fn leader(&self, leader: Option<NodeId>, term: u64) {
        let t = self.now_ms();
        self.with(|d| {
            if d.leaders.last().map(|(_, l, tm)| (*l, *tm)) != Some((leader, term)) {
                d.leaders.push((t, leader, term));
            }
        });
    }

    pub fn lag(&self, regions: Vec<(String, u64, f64)>) {
        let t = self.now_ms();
        self.with(|d| d.lag.push(LagSample { at_ms: t, regions }));
    }
}
