//! What each episode of a plan does (see `scenario.rs` for the list), and the overlays that run
//! beside the episodes: a flaky WAN and skewed clocks. Every episode heals its own faults by the
//! end of its window, except a wiped region, which stays out.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tetrad_node::seams::net::NodeId;

use crate::budget::Budget;
use crate::clock::{ClockSettings, SimClock};
use crate::cluster::REGIONS;
use crate::disk::DiskFaults;
use crate::fault::{Cut, Driver};
use crate::net::{LinkFaults, SimNet};
use crate::scenario::{Episode, Window};
use crate::timeline::Timeline;
use tetrad_node::meta::state::Mode;

/// How long a strike waits for an ack before it falls back to a fault at a random target.
const STRIKE_WAIT: Duration = Duration::from_secs(5);

impl Driver<'_> {
    pub async fn episode(&mut self, w: &Window, e: Episode) {
        self.at(w.start).await;
        self.log(format!("episode {e:?} until {:.1}s", w.end.as_secs_f64()));
        match e {
            Episode::RegionOutage { at_ack, plus_node } => self.region_outage(w, at_ack, plus_node).await,
            Episode::RegionPartition => self.region_partition(w).await,
            Episode::RegionFreeze => self.region_freeze(w).await,
            Episode::NodeCrash => self.node_crash(w).await,
            Episode::NodePause => self.node_pause(w).await,
            Episode::DiskFaults { rot } => self.disk_faults(w, rot).await,
            Episode::RollingRestart { all } => self.rolling_restart(w, all).await,
            Episode::WipedRegion { plus_node } => self.wiped_region(w, plus_node).await,
            Episode::TwoRegions => self.beyond_regions(w, 2, 0).await,
            Episode::RegionPlusTwo => self.beyond_regions(w, 1, 2).await,
            Episode::DoubleRot => self.double_rot(w).await,
        }
    }

    /// Crashes a region (and maybe one more node), right after an ack or at a random instant.
    async fn region_outage(&mut self, w: &Window, at_ack: bool, plus_node: bool) {
        let t0 = self.between(w.start, w.start + (w.end - w.start) / 4);
        self.at(t0).await;
        let leader_region = self.leader_region();
        // Half the time, for a near-sync or async tenant, the WAN out of the leader's region is
        // congested first, so the other regions' replicas fall behind what the leader acks (and
        // reports) when the region dies: the loss accounting and the lag gate are tested at
        // their edge, not only with replicas milliseconds behind.
        let congested = match leader_region {
            Some(r) if self.tenant.mode != Mode::Sync && self.rng.random_bool(0.5) => {
                let bw = self.rng.random_range(64u64..=512) << 10;
                for other in (0..REGIONS.len()).filter(|o| *o != r) {
                    self.c.net.set_bandwidth(r, other, Some(bw));
                }
                self.log(format!("congested WAN out of {} ({} KiB/s)", REGIONS[r], bw >> 10));
                self.wait_between(Duration::from_secs(2), Duration::from_secs(6)).await;
                Some(r)
            }
            _ => None,
        };
        let struck = if at_ack { self.strike_at_ack(false, plus_node, STRIKE_WAIT).await } else { None };
        let (region, extra, leader) = match struck {
            Some(s) => (s.region, s.extra, Some(s.leader)),
            None => {
                let region = self.target_region(leader_region, 0.7);
                let extra = if plus_node { self.nearest_voter_outside(region) } else { None };
                for id in self.c.region_nodes(region) {
                    self.crash(id);
                }
                if let Some(x) = extra {
                    self.crash(x);
                }
                self.tl.disruption();
                (region, extra, None)
            }
        };
        if let Some(r) = congested {
            for other in (0..REGIONS.len()).filter(|o| *o != r) {
                self.c.net.set_bandwidth(r, other, None);
            }
        }
        let outage = (Some(region) == leader_region || struck.is_some())
            .then(|| self.begin_outage(region, "power loss", extra.is_some()));
        let now = self.now();
        let back = self.between(now + (w.end - now.min(w.end)) * 2 / 5, now + (w.end - now.min(w.end)) * 4 / 5);
        let extra_back = self.between(now + Duration::from_secs(1), w.end);
        let mut restarts =
            vec![(back, self.c.region_nodes(region).into_iter().filter(|id| Some(*id) != leader).collect())];
        if let Some(x) = extra {
            restarts.push((extra_back, vec![x]));
        }
        // The leader that acked comes back last, after the others may have elected a leader
        // without it: machines never return from a power loss all at once, and an entry that only
        // the old leader made durable is lost exactly then.
        if let Some(l) = leader {
            let last = back.max(if extra.is_some() { extra_back } else { back });
            let at = self.between(last + Duration::from_secs(1), last + Duration::from_secs(5)).min(w.end.max(last));
            restarts.push((at, vec![l]));
        }
        restarts.sort();
        for (at, ids) in restarts {
            self.at(at).await;
            self.end_outage(outage);
            for id in ids {
                self.restart(id).await;
            }
        }
    }

    /// A region to strike: the tenant leader's (its primary region) with probability `p_sync`
    /// for a sync tenant, more often for near-sync and async, whose claims are about exactly that
    /// loss; else any region.
    fn target_region(&mut self, leader_region: Option<usize>, p_sync: f64) -> usize {
        let p = if self.tenant.mode == Mode::Sync { p_sync } else { 0.8 };
        match leader_region {
            Some(r) if self.rng.random_bool(p) => r,
            _ => self.rng.random_range(0..REGIONS.len()),
        }
    }

    /// Freezes every node of a region (the tenant leader's, mostly) for longer than the liveness
    /// period, most of the time, then resumes them: a region that is not dead, only stalled, must
    /// stop acking before another region takes over, and rejoin as followers afterwards.
    async fn region_freeze(&mut self, w: &Window) {
        self.at_between(w.start, w.start + (w.end - w.start) / 4).await;
        let leader_region = self.leader_region();
        let region = self.target_region(leader_region, 0.6);
        let now = self.now();
        let longest = Duration::from_secs(20).min((w.end - now.min(w.end)) * 4 / 5).max(Duration::from_secs(2));
        let len = self.between(Duration::from_secs(2), longest);
        self.log(format!("freeze region {} for {:.1}s", REGIONS[region], len.as_secs_f64()));
        for id in self.c.region_nodes(region) {
            self.pause(id);
        }
        let outage = (Some(region) == leader_region).then(|| {
            self.tl.disruption();
            self.begin_outage(region, "freeze", false)
        });
        self.at(now + len).await;
        self.end_outage(outage);
        for id in self.c.region_nodes(region) {
            self.resume(id);
        }
    }

    async fn region_partition(&mut self, w: &Window) {
        let t0 = self.between(w.start, w.start + (w.end - w.start) / 4);
        self.at(t0).await;
        let leader_region = self.leader_region();
        let region = self.target_region(leader_region, 0.5);
        let how = [Cut::Both, Cut::Out, Cut::In][self.rng.random_range(0..3usize)];
        self.cut_region(region, how);
        let outage = (leader_region == Some(region)).then(|| {
            self.tl.disruption();
            self.begin_outage(region, "cut", false)
        });
        let now = self.now();
        let heal = self.between(now + (w.end - now.min(w.end)) * 2 / 5, w.end);
        self.at(heal).await;
        self.end_outage(outage);
        self.heal_region(region);
    }

    async fn node_crash(&mut self, w: &Window) {
        let n = self.rng.random_range(1..=2u32);
        let len = (w.end - w.start) / n;
        for i in 0..n {
            let (s, e) = (w.start + len * i, w.start + len * (i + 1));
            self.at_between(s, s + len / 4).await;
            let leader = self.leader();
            let Some(victim) = self.leader_or_random(0.5) else { continue };
            self.crash(victim);
            if Some(victim) == leader {
                self.tl.disruption();
            }
            let now = self.now();
            let back = self.between(now + Duration::from_secs(2), now + (e - now.min(e)) * 7 / 10);
            self.at(back).await;
            self.restart(victim).await;
        }
    }

    async fn node_pause(&mut self, w: &Window) {
        self.at_between(w.start, w.start + (w.end - w.start) / 4).await;
        let leader = self.leader();
        let Some(victim) = self.leader_or_random(0.6) else { return };
        // Sometimes longer than the liveness period, so the frozen leader's lease lapses.
        let now = self.now();
        let longest = Duration::from_secs(12).min((w.end - now.min(w.end)) * 4 / 5);
        let len = self.between(Duration::from_secs(1), longest);
        self.pause(victim);
        if Some(victim) == leader {
            self.tl.disruption();
        }
        self.at(now + len).await;
        self.resume(victim);
    }

    /// Torn writes on every crash from now on; a torn power loss of the leader's region right
    /// after an ack; bit rot on one replica; a power loss in the middle of a commit.
    async fn disk_faults(&mut self, w: &Window, rot: bool) {
        let unit = 1usize << self.rng.random_range(0..=12u32);
        for n in self.c.nodes.values() {
            n.disk.set_faults(DiskFaults { torn_write_on_crash: true, torn_unit_bytes: unit });
        }
        self.log(format!("torn writes on every crash from now on ({unit}-byte units)"));
        let third = (w.end - w.start) / 3;
        // 1: a torn crash right after an ack.
        self.at_between(w.start, w.start + third / 4).await;
        let plus_node = self.rng.random_bool(0.5);
        let struck = self.strike_at_ack(false, plus_node, STRIKE_WAIT).await;
        let (down, leader): (Vec<NodeId>, Option<NodeId>) = match struck {
            Some(s) => (self.c.region_nodes(s.region).into_iter().chain(s.extra).collect(), Some(s.leader)),
            None => {
                let victim = self.leader_or_random(0.5);
                victim.iter().for_each(|v| self.crash(*v));
                (victim.into_iter().collect(), None)
            }
        };
        let now = self.now();
        self.at_between(now + Duration::from_secs(2), (w.start + third).max(now + Duration::from_secs(3))).await;
        // As in a region outage, the leader that acked comes back last.
        for id in down.iter().copied().filter(|id| Some(*id) != leader) {
            self.restart(id).await;
        }
        if let Some(l) = leader.filter(|l| down.contains(l)) {
            self.wait_between(Duration::from_secs(1), Duration::from_secs(4)).await;
            self.restart(l).await;
        }
        // 2: bit rot on one replica, early enough that the replicas snapshot after it.
        if rot {
            let voters: Vec<NodeId> =
                self.tenant.voters.iter().copied().filter(|v| self.up_nodes().contains(v)).collect();
            if let Some(victim) = self.pick(&voters) {
                self.rot(victim, &[]);
            }
        }
        // 3: power loss during a commit.
        let up = self.up_nodes();
        if let Some(victim) = self.pick(&up) {
            let disk = self.c.nodes[&victim].disk.clone();
            let before = disk.stats().crashes;
            let nth = self.rng.random_range(1..=30u64);
            let seed: u64 = self.rng.random();
            disk.crash_at_sync(nth, seed);
            self.log(format!("power loss armed on {} at its sync #{nth}", self.name(victim)));
            let until = self.origin + (w.end - third / 3);
            while tokio::time::Instant::now() < until && disk.stats().crashes == before {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            disk.disarm_crash_at_sync();
            if disk.stats().crashes > before {
                self.log(format!("power loss during a commit on {}", self.name(victim)));
                self.crash(victim);
                self.wait_between(Duration::from_secs(1), Duration::from_secs(4)).await;
                self.restart(victim).await;
            }
        }
    }

    async fn rolling_restart(&mut self, w: &Window, all: bool) {
        let mut order = self.up_nodes();
        // A seeded shuffle.
        for i in (1..order.len()).rev() {
            let j = self.rng.random_range(0..=i);
            order.swap(i, j);
        }
        if !all {
            order.truncate(self.rng.random_range(3..=4usize));
        }
        let slot = (w.end - w.start) / order.len().max(1) as u32;
        for (i, id) in order.into_iter().enumerate() {
            let s = w.start + slot * i as u32;
            self.at(s).await;
            if self.leader() == Some(id) {
                self.tl.disruption();
            }
            self.stop(id).await;
            self.wait_between(Duration::from_millis(300), (slot / 3).max(Duration::from_millis(400))).await;
            self.restart(id).await;
        }
    }

    async fn wiped_region(&mut self, w: &Window, plus_node: bool) {
        self.at_between(w.start, w.start + (w.end - w.start) / 5).await;
        let (region, extra) = match self.strike_at_ack(true, plus_node, STRIKE_WAIT).await {
            Some(s) => (s.region, s.extra),
            None => {
                let region = self.rng.random_range(0..REGIONS.len());
                let extra = if plus_node { self.nearest_voter_outside(region) } else { None };
                for id in self.c.region_nodes(region) {
                    self.wipe(id);
                }
                self.tl.disruption();
                if let Some(x) = extra {
                    self.crash(x);
                }
                (region, extra)
            }
        };
        // The operator replaces the disks and re-initialises the nodes.
        self.wait_between(Duration::from_secs(1), Duration::from_secs(4)).await;
        for id in self.c.region_nodes(region) {
            self.restart(id).await;
        }
        if let Some(x) = extra {
            let now = self.now();
            let back = self.between(now + Duration::from_secs(5), (now + Duration::from_secs(15)).min(w.end));
            self.at(back).await;
            self.restart(x).await;
        }
    }

    /// Beyond the budget: `regions` whole regions and `nodes` more nodes down at once.
    async fn beyond_regions(&mut self, w: &Window, regions: usize, nodes: usize) {
        self.at_between(w.start, w.start + (w.end - w.start) / 4).await;
        let mut rs: Vec<usize> = (0..REGIONS.len()).collect();
        let mut down = vec![];
        for _ in 0..regions {
            let r = rs.remove(self.rng.random_range(0..rs.len()));
            down.extend(self.c.region_nodes(r));
        }
        for _ in 0..nodes {
            let others: Vec<NodeId> = self.up_nodes().into_iter().filter(|id| !down.contains(id)).collect();
            down.extend(self.pick(&others));
        }
        self.log("beyond the budget on purpose".to_string());
        for id in &down {
            self.crash(*id);
        }
        self.tl.disruption();
        let now = self.now();
        self.at_between(now + (w.end - now.min(w.end)) / 3, w.end).await;
        for id in down {
            self.restart(id).await;
        }
    }

    /// Beyond the budget: the same chunk file rots on two replicas.
    async fn double_rot(&mut self, w: &Window) {
        self.at_between(w.start, w.end).await;
        let voters: Vec<NodeId> = self.tenant.voters.iter().copied().filter(|v| self.up_nodes().contains(v)).collect();
        if voters.len() >= 2 {
            self.log("beyond the budget on purpose".to_string());
            self.rot(voters[0], &voters[1..2]);
        }
    }
}

/// Link faults and latency spikes over `w`, as a task beside the episodes.
pub async fn flaky_wan(net: SimNet, tl: Timeline, origin: tokio::time::Instant, w: Window, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    tokio::time::sleep_until(origin + w.start).await;
    let f = LinkFaults {
        loss: rng.random_range(0.0..0.05),
        jitter_ms: rng.random_range(0..=40),
        duplicate: rng.random_range(0.0..0.05),
        reorder: rng.random_range(0.0..0.1),
        reorder_ms: rng.random_range(20..=300),
        retransmit: rng.random_range(0.0..0.15),
    };
    let desc = format!(
        "loss {:.1}%, retransmits {:.1}%, jitter {} ms, duplicates {:.1}%, reorder {:.1}% by up to {} ms",
        f.loss * 100.0,
        f.retransmit * 100.0,
        f.jitter_ms,
        f.duplicate * 100.0,
        f.reorder * 100.0,
        f.reorder_ms
    );
    tl.log(format!("flaky WAN: {desc}"));
    tl.net(Some(desc));
    net.set_faults(f);
    let spikes = rng.random_range(1..=3u32);
    let len = (w.end - w.start) / spikes;
    for i in 0..spikes {
        let s = w.start + len * i + len.mul_f64(rng.random_range(0.0..0.5));
        let a = rng.random_range(0..REGIONS.len());
        let b = (a + rng.random_range(1..REGIONS.len())) % REGIONS.len();
        let extra = rng.random_range(50..=500u64);
        let hold = len.mul_f64(rng.random_range(0.2..0.5));
        tokio::time::sleep_until(origin + s).await;
        tl.log(format!("latency spike {}<->{} +{extra} ms", REGIONS[a], REGIONS[b]));
        net.set_slow(a, b, extra);
        tokio::time::sleep(hold).await;
        net.set_slow(a, b, 0);
    }
    tokio::time::sleep_until(origin + w.end).await;
    net.set_faults(LinkFaults::default());
    tl.log("flaky WAN ends".to_string());
    tl.net(None);
}

/// Skewed clocks over `w`: wall offsets and monotonic rates, drawn again once midway; within the
/// budget's bounds unless `beyond`.
#[allow(clippy::too_many_arguments)]
pub async fn clock_skew(
    clocks: Vec<(NodeId, Arc<SimClock>)>,
    tl: Timeline,
    budget: Arc<Mutex<Budget>>,
    origin: tokio::time::Instant,
    w: Window,
    beyond: bool,
    seed: u64,
) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let (spread, offset) = {
        let b = budget.lock().expect("budget lock");
        (b.max_rate_spread_ppm(), b.max_offset_ms())
    };
    // Rates within +-40% of the allowed spread keep any two nodes within it.
    let (rate, off) = if beyond { (spread * 3, offset * 20) } else { (spread * 2 / 5, offset * 4 / 5) };
    let draw = |rng: &mut SmallRng| ClockSettings {
        wall_offset_ms: rng.random_range(-off..=off),
        rate_ppm: rng.random_range(-rate..=rate),
    };
    tokio::time::sleep_until(origin + w.start).await;
    tl.log(format!("clock skew: offsets up to {off} ms, rates up to {rate} ppm"));
    let set = |id: NodeId, c: &SimClock, s: ClockSettings| {
        c.set(s);
        tl.clock(id, s.wall_offset_ms, s.rate_ppm);
        budget.lock().expect("budget lock").clock(tl.now_ms(), id, s);
    };
    for (id, c) in &clocks {
        set(*id, c, draw(&mut rng));
    }
    tokio::time::sleep_until(origin + w.start + (w.end - w.start) / 2).await;
    for _ in 0..3 {
        let (id, c) = &clocks[rng.random_range(0..clocks.len())];
        set(*id, c, draw(&mut rng));
    }
    tokio::time::sleep_until(origin + w.end).await;
    for (id, c) in &clocks {
        set(*id, c, ClockSettings::default());
    }
    tl.log("clock skew ends".to_string());
}
