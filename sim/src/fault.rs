//! The fault driver: the primitives every episode is made of (power loss, restart, pause, cuts,
//! a strike right after an ack, bit rot), each recorded in the timeline and the fault budget, and
//! the final heal. The episodes themselves are in `episode.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::RngExt;
use tetrad_node::meta::state::Mode;
use tetrad_node::node::Node;
use tetrad_node::seams::disk::Disk;
use tetrad_node::seams::net::NodeId;

use crate::budget::Budget;
use crate::clock::ClockSettings;
use crate::cluster::{NodeState, SimCluster, REGIONS};
use crate::timeline::Timeline;
use crate::workload::AckLog;

/// The tenant under test.
#[derive(Clone, Debug)]
pub struct TenantInfo {
    pub name: String,
    /// Its first epoch's Raft group (`t/<name>/1`); a failover starts `t/<name>/2`, and so on.
    pub group: String,
    /// Its first epoch's voters.
    pub voters: Vec<NodeId>,
    pub mode: Mode,
    /// near-sync only: the lag gate's target and what the leader does when it is exceeded.
    pub rpo_target_ms: u64,
    pub on_lag: String,
    /// The primary region it was created with.
    pub primary: usize,
}

impl TenantInfo {
    /// The prefix of every epoch's group name.
    pub fn group_prefix(&self) -> String {
        format!("t/{}/", self.name)
    }

    /// The epoch of one of this tenant's groups.
    pub fn epoch_of(&self, group: &str) -> Option<u64> {
        group.strip_prefix(&self.group_prefix())?.parse().ok()
    }
}

/// A region-level fault that hit the region of the tenant's leader (its primary region): a
/// power loss, a cut or a freeze. Near-sync and async tenants must fail over on their own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outage {
    pub region: usize,
    pub what: &'static str,
    pub start_ms: u64,
    /// When the region was back (restarted, healed, resumed).
    pub end_ms: Option<u64>,
    /// Another node outside the region was down too.
    pub extra: bool,
}

/// What a strike hit: the acking leader's region, and maybe one more node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strike {
    pub region: usize,
    pub extra: Option<NodeId>,
    /// The node that had just acked.
    pub leader: NodeId,
}

/// How a region is cut off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    Both,
    /// The region cannot send.
    Out,
    /// The region cannot receive.
    In,
}

impl Cut {
    pub fn as_str(self) -> &'static str {
        match self {
            Cut::Both => "both",
            Cut::Out => "out",
            Cut::In => "in",
        }
    }
}

pub struct Driver<'a> {
    pub c: &'a mut SimCluster,
    pub rng: SmallRng,
    pub origin: tokio::time::Instant,
    pub tl: Timeline,
    pub budget: Arc<Mutex<Budget>>,
    pub acks: AckLog,
    pub tenant: TenantInfo,
    /// Things that went wrong while injecting faults (a node that cannot restart, say).
    pub problems: Vec<String>,
    /// Region-level faults of the tenant's primary region, for the failover-liveness oracle.
    pub outages: Vec<Outage>,
    cuts: BTreeMap<usize, Cut>,
}

impl<'a> Driver<'a> {
    pub fn new(
        c: &'a mut SimCluster,
        rng: SmallRng,
        origin: tokio::time::Instant,
        tl: Timeline,
        budget: Arc<Mutex<Budget>>,
        acks: AckLog,
        tenant: TenantInfo,
    ) -> Self {
        Self { c, rng, origin, tl, budget, acks, tenant, problems: vec![], outages: vec![], cuts: BTreeMap::new() }
    }

    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn now_ms(&self) -> u64 {
        self.now().as_millis() as u64
    }

    /// Sleeps until `d` after the run's start (at once if that has passed).
    pub async fn at(&self, d: Duration) {
        tokio::time::sleep_until(self.origin + d).await;
    }

    pub fn log(&self, text: String) {
        self.c.trace.event(&text);
        self.tl.log(text);
    }

    /// A random instant in `[from, to)` (`from` when the range is empty).
    pub fn between(&mut self, from: Duration, to: Duration) -> Duration {
        if to <= from {
            return from;
        }
        from + (to - from).mul_f64(self.rng.random_range(0.0..1.0))
    }

    /// Sleeps until a random instant in `[from, to)` after the run's start.
    pub async fn at_between(&mut self, from: Duration, to: Duration) {
        let t = self.between(from, to);
        self.at(t).await;
    }

    /// Sleeps for a random time in `[from, to)`.
    pub async fn wait_between(&mut self, from: Duration, to: Duration) {
        let d = self.between(from, to);
        tokio::time::sleep(d).await;
    }

    pub fn name(&self, id: NodeId) -> String {
        self.c.nodes.get(&id).map(|n| n.cfg.name.clone()).unwrap_or_else(|| id.to_string())
    }

    /// Records a node's state in the timeline and the budget.
    fn note(&mut self, id: NodeId) {
        let n = &self.c.nodes[&id];
        let (state, replaced) = (n.state, n.replaced);
        let label = if replaced && state == NodeState::Up { "replaced" } else { state.as_str() };
        self.tl.node_state(id, label);
        let impaired = match (state, replaced) {
            (NodeState::Up, false) => None,
            (NodeState::Up, true) => Some("re-initialised after a wipe"),
            (s, _) => Some(s.as_str()),
        };
        let at = self.now_ms();
        self.budget.lock().expect("budget lock").node(at, id, impaired);
    }

    /// Nodes that run and are reachable under their original identity.
    pub fn up_nodes(&self) -> Vec<NodeId> {
        self.c.nodes.iter().filter(|(_, n)| n.state == NodeState::Up && !n.replaced).map(|(id, _)| *id).collect()
    }

    pub fn pick<T: Copy>(&mut self, from: &[T]) -> Option<T> {
        (!from.is_empty()).then(|| from[self.rng.random_range(0..from.len())])
    }

    /// The tenant's leader, as the running nodes see it (newest epoch, then highest term, wins).
    pub fn leader(&self) -> Option<NodeId> {
        let mut best: Option<((u64, u64), NodeId)> = None;
        for n in self.c.reachable() {
            for (g, term, leader) in n.group_leaders() {
                let Some(epoch) = self.tenant.epoch_of(&g) else { continue };
                if leader == Some(n.id()) && best.is_none_or(|(k, _)| (epoch, term) > k) {
                    best = Some(((epoch, term), n.id()));
                }
            }
        }
        best.map(|(_, id)| id)
    }

    /// The region of the tenant's leader now (its primary region when healthy).
    pub fn leader_region(&self) -> Option<usize> {
        self.leader().map(|l| self.c.region_of(l))
    }

    /// Notes that a region-level fault hit the tenant's primary region; returns its index.
    pub fn begin_outage(&mut self, region: usize, what: &'static str, extra: bool) -> usize {
        let start_ms = self.now_ms();
        self.outages.push(Outage { region, what, start_ms, end_ms: None, extra });
        self.outages.len() - 1
    }

    pub fn end_outage(&mut self, i: Option<usize>) {
        let at = self.now_ms();
        if let Some(o) = i.and_then(|i| self.outages.get_mut(i)) {
            o.end_ms.get_or_insert(at);
        }
    }

    /// The leader (with probability `p`) or else a random node that is up.
    pub fn leader_or_random(&mut self, p: f64) -> Option<NodeId> {
        let leader = self.leader();
        if leader.is_some() && self.rng.random_bool(p) {
            return leader;
        }
        let up = self.up_nodes();
        self.pick(&up)
    }

    pub fn crash(&mut self, id: NodeId) {
        if self.c.nodes[&id].running.is_none() {
            return;
        }
        self.log(format!("crash {}", self.name(id)));
        self.c.crash(id);
        self.note(id);
    }

    /// Power loss and a wiped disk.
    pub fn wipe(&mut self, id: NodeId) {
        self.log(format!("wipe {}", self.name(id)));
        self.c.wipe(id);
        self.note(id);
    }

    /// Starts a node that does not run (re-initialising it if its store is gone).
    pub async fn restart(&mut self, id: NodeId) {
        if self.c.nodes[&id].running.is_some() {
            return;
        }
        self.log(format!("start {}", self.name(id)));
        if let Err(e) = self.c.start(id).await {
            self.log(format!("restart failed: {e}"));
            self.problems.push(format!("liveness: node {} cannot restart: {e}", self.name(id)));
        }
        self.note(id);
    }

    pub async fn stop(&mut self, id: NodeId) {
        self.log(format!("stop {}", self.name(id)));
        self.c.stop(id).await;
        self.note(id);
    }

    pub fn pause(&mut self, id: NodeId) {
        self.log(format!("pause {}", self.name(id)));
        self.c.pause(id);
        self.note(id);
    }

    pub fn resume(&mut self, id: NodeId) {
        if self.c.nodes[&id].state == NodeState::Paused {
            self.log(format!("resume {}", self.name(id)));
            self.c.resume(id);
            self.note(id);
        }
    }

    pub fn cut_region(&mut self, region: usize, how: Cut) {
        self.log(format!("cut off region {} ({})", REGIONS[region], how.as_str()));
        for other in (0..REGIONS.len()).filter(|o| *o != region) {
            if how != Cut::In {
                self.c.net.cut(region, other);
            }
            if how != Cut::Out {
                self.c.net.cut(other, region);
            }
        }
        self.cuts.insert(region, how);
        self.tl.region_cut(region, Some(how.as_str()));
        let at = self.now_ms();
        self.budget.lock().expect("budget lock").region_cut(at, region, true);
    }

    pub fn heal_region(&mut self, region: usize) {
        if self.cuts.remove(&region).is_none() {
            return;
        }
        self.log(format!("heal region {}", REGIONS[region]));
        self.c.net.heal_region(region);
        self.tl.region_cut(region, None);
        let at = self.now_ms();
        self.budget.lock().expect("budget lock").region_cut(at, region, false);
    }

    pub fn set_clock(&mut self, id: NodeId, s: ClockSettings) {
        self.c.nodes[&id].clock.set(s);
        self.tl.clock(id, s.wall_offset_ms, s.rate_ppm);
        let at = self.now_ms();
        self.budget.lock().expect("budget lock").clock(at, id, s);
    }

    /// The tenant's voter outside `region` nearest to it, among those up.
    pub fn nearest_voter_outside(&self, region: usize) -> Option<NodeId> {
        let up = self.up_nodes();
        let leader = self.leader().and_then(|l| self.c.handles.lock().expect("handles lock").get(&l).cloned());
        extra_victim(&self.tenant, leader.as_ref(), &up, &self.c.spec.one_way_ms, region, |id| self.c.region_of(id))
    }

    /// Right after the next ack (waiting at most `limit`), cuts power to the acking node's region
    /// (wiping its disks with `wipe`) and, with `plus_node`, to the nearest voter outside it.
    /// Returns what it hit, or `None` when no ack came.
    pub async fn strike_at_ack(&mut self, wipe: bool, plus_node: bool, limit: Duration) -> Option<Strike> {
        let switch = self.c.power_switch();
        let region_of: BTreeMap<NodeId, usize> = self.c.nodes.iter().map(|(id, n)| (*id, n.region)).collect();
        let tenant = self.tenant.clone();
        let matrix = self.c.spec.one_way_ms.clone();
        let handles = self.c.handles.clone();
        let seed: u64 = self.rng.random();
        let struck: Arc<Mutex<Option<Strike>>> = Arc::default();
        let out = struck.clone();
        self.acks.arm(Box::new(move |ack| {
            let Some(&region) = region_of.get(&ack.by) else { return };
            let (up, leader): (Vec<NodeId>, Option<Node>) = {
                let h = handles.lock().expect("handles lock");
                (h.keys().copied().collect(), h.get(&ack.by).cloned())
            };
            let extra = if plus_node {
                extra_victim(&tenant, leader.as_ref(), &up, &matrix, region, |id| region_of[&id])
            } else {
                None
            };
            for (&id, _) in region_of.iter().filter(|(_, r)| **r == region) {
                switch.cut(id, wipe, seed ^ id);
            }
            if let Some(x) = extra {
                switch.cut(x, false, seed ^ x);
            }
            *out.lock().expect("strike lock") = Some(Strike { region, extra, leader: ack.by });
        }));
        let fired = tokio::select! {
            _ = self.acks.fired() => true,
            _ = tokio::time::sleep(limit) => {
                // It may have fired in the same instant: then its notification is pending.
                if self.acks.disarm() { false } else { self.acks.fired().await; true }
            }
        };
        if !fired {
            self.log("no ack came to strike after".to_string());
            return None;
        }
        let strike = struck.lock().expect("strike lock").take()?;
        let Strike { region, extra, .. } = strike;
        let what = if wipe { "wipe" } else { "power loss" };
        self.log(format!("right after an ack: {what} in region {}", REGIONS[region]));
        for id in self.c.region_nodes(region) {
            self.c.reap(id, if wipe { NodeState::Wiped } else { NodeState::Crashed });
            self.note(id);
        }
        if let Some(x) = extra {
            self.log(format!("and power loss at the nearest voter {}", self.name(x)));
            self.c.reap(x, NodeState::Crashed);
            self.note(x);
        }
        self.tl.disruption();
        Some(strike)
    }

    /// Flips one bit in one chunk file of `node`; the same file on every node in `also`.
    pub fn rot(&mut self, node: NodeId, also: &[NodeId]) -> bool {
        let n = &self.c.nodes[&node];
        let files = chunk_files(&n.disk, &n.cfg.data_dir);
        let Some(rel) = self.pick_owned(&files) else {
            self.log(format!("no chunk file to rot on {}", self.name(node)));
            return false;
        };
        let bit = self.rng.random_range(0..8u8);
        let frac: f64 = self.rng.random_range(0.0..1.0);
        for id in std::iter::once(node).chain(also.iter().copied()) {
            let n = &self.c.nodes[&id];
            let path = n.cfg.data_dir.join(&rel);
            let len = n.disk.read_file(&path).map(|d| d.len()).unwrap_or(0);
            if len == 0 {
                continue;
            }
            let offset = ((len as f64 * frac) as u64).min(len as u64 - 1);
            if n.disk.rot_bit(&path, offset, bit).is_ok() {
                self.log(format!("bit rot: {} byte {offset} bit {bit} on {}", rel.display(), self.name(id)));
                let at = self.now_ms();
                self.budget.lock().expect("budget lock").rot(at);
            }
        }
        true
    }

    fn pick_owned<T: Clone>(&mut self, from: &[T]) -> Option<T> {
        (!from.is_empty()).then(|| from[self.rng.random_range(0..from.len())].clone())
    }

    /// Heals everything that can heal: the network, paused and stopped or crashed nodes, clocks.
    /// A wiped node is re-initialised and stays out under its new identity.
    pub async fn heal_all(&mut self) {
        self.log("heal everything".to_string());
        self.c.net.calm();
        self.tl.net(None);
        for region in self.cuts.keys().copied().collect::<Vec<_>>() {
            self.heal_region(region);
        }
        for id in self.c.ids() {
            self.c.nodes[&id].disk.disarm_crash_at_sync();
            if self.c.nodes[&id].clock.settings() != ClockSettings::default() {
                self.set_clock(id, ClockSettings::default());
            }
            self.resume(id);
        }
        for id in self.c.ids() {
            self.restart(id).await;
        }
        let at = self.now_ms();
        for o in &mut self.outages {
            o.end_ms.get_or_insert(at);
        }
    }
}

/// The voter outside `region` with the lowest latency from it (ties: lowest id), among `up`.
/// The one more node a region fault takes with it (`plus_node`), chosen to test the claim at
/// its edge. (With eu-central, which holds two meta voters, the holder is often eu-west-1, a
/// meta voter: the meta group then loses its quorum too, as in seed 10179.) For sync, the first epoch's voter nearest the region (the likeliest partner of the
/// region's voters in a commit quorum). For near-sync and async, given the tenant's `leader` (in
/// that region), the replica outside the region that holds the newest writes as the leader knows
/// them: the copy the lag gate is likeliest to be counting on. Otherwise the nearest voter.
fn extra_victim(
    tenant: &TenantInfo,
    leader: Option<&Node>,
    up: &[NodeId],
    one_way_ms: &[Vec<u64>],
    region: usize,
    region_of: impl Fn(NodeId) -> usize,
) -> Option<NodeId> {
    if tenant.mode != Mode::Sync {
        let prefix = tenant.group_prefix();
        let newest = leader.into_iter().flat_map(|l| l.led_group_matched()).filter_map(|(g, matched)| {
            let epoch = g.strip_prefix(&prefix)?.parse::<u64>().ok()?;
            Some((epoch, matched))
        });
        if let Some((_, matched)) = newest.max_by_key(|(e, _)| *e) {
            let best = matched
                .into_iter()
                .filter(|(m, i)| i.is_some() && up.contains(m) && region_of(*m) != region)
                .max_by_key(|(m, i)| (*i, std::cmp::Reverse(one_way_ms[region][region_of(*m)]), std::cmp::Reverse(*m)));
            if let Some((m, _)) = best {
                return Some(m);
            }
        }
    }
    nearest_voter(&tenant.voters, up, one_way_ms, region, region_of)
}

fn nearest_voter(
    voters: &[NodeId],
    up: &[NodeId],
    one_way_ms: &[Vec<u64>],
    region: usize,
    region_of: impl Fn(NodeId) -> usize,
) -> Option<NodeId> {
    voters
        .iter()
        .copied()
        .filter(|v| up.contains(v) && region_of(*v) != region)
        .min_by_key(|v| (one_way_ms[region][region_of(*v)], *v))
}

/// Chunk files of a node, relative to its data directory: `chunks/<tenant>/<2 hex>/<hash>`
/// (node/src/storage/chunks.rs, one namespace per tenant since issue #12).
fn chunk_files(disk: &crate::disk::SimDisk, data_dir: &std::path::Path) -> Vec<PathBuf> {
    let root = data_dir.join("chunks");
    let mut out = vec![];
    for tenant in disk.list_dir(&root).unwrap_or_default() {
        for sub in disk.list_dir(&root.join(&tenant)).unwrap_or_default() {
            for f in disk.list_dir(&root.join(&tenant).join(&sub)).unwrap_or_default() {
                out.push(PathBuf::from("chunks").join(&tenant).join(&sub).join(f));
            }
        }
    }
    out
}
