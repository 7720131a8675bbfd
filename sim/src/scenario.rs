//! Scenarios: which faults a run injects, and when, drawn from the seed.
//!
//! A plan is a list of episodes, each a window of simulated time in which one kind of fault is
//! injected and healed again, plus background overlays (a flaky WAN, skewed clocks) that span
//! several episodes. `mixed` draws a different plan per seed, as TigerBeetle's VOPR does; a share
//! of `mixed` seeds deliberately goes beyond the fault budget, where only safety is checked.
//! What each episode does is in `fault.rs`.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::RngExt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// No faults: the baseline.
    Calm,
    RegionOutage,
    RegionPartition,
    RegionFreeze,
    NodeCrash,
    NodePause,
    FlakyWan,
    DiskFaults,
    ClockSkew,
    RollingRestart,
    WipedRegion,
    /// A per-seed draw of the others.
    Mixed,
}

const NAMES: [(&str, Scenario); 12] = [
    ("calm", Scenario::Calm),
    ("region-outage", Scenario::RegionOutage),
    ("region-partition", Scenario::RegionPartition),
    ("region-freeze", Scenario::RegionFreeze),
    ("node-crash", Scenario::NodeCrash),
    ("node-pause", Scenario::NodePause),
    ("flaky-wan", Scenario::FlakyWan),
    ("disk-faults", Scenario::DiskFaults),
    ("clock-skew", Scenario::ClockSkew),
    ("rolling-restart", Scenario::RollingRestart),
    ("wiped-region", Scenario::WipedRegion),
    ("mixed", Scenario::Mixed),
];

impl Scenario {
    pub fn parse(s: &str) -> Option<Scenario> {
        NAMES.iter().find(|(n, _)| *n == s).map(|(_, sc)| *sc)
    }

    /// Every scenario, in a fixed order: `sweep --scenario all` gives seed `s` the scenario
    /// `all()[s % len]`, so a range of seeds covers each of them alike.
    pub fn all() -> Vec<Scenario> {
        NAMES.iter().map(|(_, sc)| *sc).collect()
    }

    pub fn names() -> Vec<&'static str> {
        NAMES.iter().map(|(n, _)| *n).collect()
    }

    pub fn name(self) -> &'static str {
        NAMES.iter().find(|(_, sc)| *sc == self).map(|(n, _)| *n).expect("every scenario is named")
    }
}

/// Fault kinds that `--without` can leave out of a plan (to bisect a failure, or to keep a known,
/// reported bug out of a sweep until it is fixed).
pub const FAULT_KINDS: [&str; 12] = [
    "region-outage",
    "region-partition",
    "region-freeze",
    "node-crash",
    "node-pause",
    "flaky-wan",
    "disk-faults",
    "bit-rot",
    "clock-skew",
    "rolling-restart",
    "wiped-region",
    "beyond-budget",
];

/// The fault kinds to leave out of a plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Without(std::collections::BTreeSet<String>);

impl Without {
    /// Parses a comma-separated list of [`FAULT_KINDS`].
    pub fn parse(list: &str) -> Result<Without, String> {
        let mut out = std::collections::BTreeSet::new();
        for k in list.split(',').map(str::trim).filter(|k| !k.is_empty()) {
            if !FAULT_KINDS.contains(&k) {
                return Err(format!("unknown fault kind {k:?}; known: {}", FAULT_KINDS.join(", ")));
            }
            out.insert(k.to_string());
        }
        Ok(Without(out))
    }

    pub fn has(&self, kind: &str) -> bool {
        self.0.contains(kind)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn list(&self) -> String {
        self.0.iter().cloned().collect::<Vec<_>>().join(",")
    }

    /// Whether an episode may be drawn.
    fn allows(&self, e: &Episode) -> bool {
        let kind = match e {
            Episode::RegionOutage { .. } => "region-outage",
            Episode::RegionPartition => "region-partition",
            Episode::RegionFreeze => "region-freeze",
            Episode::NodeCrash => "node-crash",
            Episode::NodePause => "node-pause",
            Episode::DiskFaults { .. } => "disk-faults",
            Episode::RollingRestart { .. } => "rolling-restart",
            Episode::WipedRegion { .. } => "wiped-region",
            Episode::TwoRegions | Episode::RegionPlusTwo => "beyond-budget",
            Episode::DoubleRot => return !self.has("beyond-budget") && !self.has("bit-rot"),
        };
        !self.has(kind)
    }
}

/// One kind of fault, injected and healed within an episode's window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Episode {
    /// A whole region loses power and comes back; `at_ack`: right after an ack, the acking
    /// leader's region; `plus_node`: and the nearest voter outside it, which is the one most
    /// likely to hold the only other copies of the newest entries.
    RegionOutage { at_ack: bool, plus_node: bool },
    /// A region is cut off, both ways or one way, then healed.
    RegionPartition,
    /// Every node of a region freezes (often past the liveness period), then resumes.
    RegionFreeze,
    /// One node at a time loses power (the leader more often than not).
    NodeCrash,
    /// A node freezes (often the leader, sometimes beyond its lease), then resumes.
    NodePause,
    /// Torn writes on every crash from now on, a power loss in the middle of a commit, a torn
    /// crash of the leader's region right after an ack, and (`rot`) bit rot in one replica's
    /// chunk file.
    DiskFaults { rot: bool },
    /// Nodes restarted gracefully one after another (`all`: every node; else a few).
    RollingRestart { all: bool },
    /// Right after an ack the leader's region is wiped (and, with `plus_node`, the nearest voter
    /// outside it crashes); the operator re-initialises the wiped nodes, which must stay out.
    WipedRegion { plus_node: bool },
    /// Beyond the budget on purpose: two regions down at once.
    TwoRegions,
    /// Beyond the budget on purpose: a region and two more nodes down at once.
    RegionPlusTwo,
    /// Beyond the budget on purpose: the same chunk rots on two replicas.
    DoubleRot,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub start: Duration,
    pub end: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub episodes: Vec<(Window, Episode)>,
    /// Link faults and latency spikes over this window.
    pub flaky_wan: Option<Window>,
    /// Skewed clocks over this window; `beyond`: rates further apart than the budget allows.
    pub clock_skew: Option<(Window, bool)>,
}

fn window(start: Duration, end: Duration) -> Window {
    Window { start, end }
}

/// Splits `[3 s, duration - 3 s]` into `k` consecutive windows.
fn split(duration: Duration, k: u32) -> Vec<Window> {
    let lead = Duration::from_secs(3).min(duration / 10);
    let span = duration.saturating_sub(lead * 2);
    (0..k).map(|i| window(lead + span * i / k, lead + span * (i + 1) / k)).collect()
}

impl Plan {
    pub fn draw(scenario: Scenario, duration: Duration, without: &Without, rng: &mut SmallRng) -> Plan {
        let mut plan = Self::draw_all(scenario, duration, without, rng);
        plan.episodes.retain(|(_, e)| without.allows(e));
        if without.has("flaky-wan") {
            plan.flaky_wan = None;
        }
        if without.has("clock-skew") || (without.has("beyond-budget") && plan.clock_skew.as_ref().is_some_and(|c| c.1))
        {
            plan.clock_skew = None;
        }
        plan
    }

    fn draw_all(scenario: Scenario, duration: Duration, without: &Without, rng: &mut SmallRng) -> Plan {
        let whole = split(duration, 1).remove(0);
        let rot = !without.has("bit-rot");
        let one = |e: Episode| Plan { episodes: vec![(whole.clone(), e)], flaky_wan: None, clock_skew: None };
        match scenario {
            Scenario::Calm => Plan { episodes: vec![], flaky_wan: None, clock_skew: None },
            Scenario::RegionOutage => {
                one(Episode::RegionOutage { at_ack: rng.random_bool(0.7), plus_node: rng.random_bool(0.5) })
            }
            Scenario::RegionPartition => one(Episode::RegionPartition),
            Scenario::RegionFreeze => one(Episode::RegionFreeze),
            Scenario::NodeCrash => one(Episode::NodeCrash),
            Scenario::NodePause => one(Episode::NodePause),
            Scenario::FlakyWan => Plan { episodes: vec![], flaky_wan: Some(whole), clock_skew: None },
            Scenario::DiskFaults => one(Episode::DiskFaults { rot }),
            Scenario::ClockSkew => {
                // Skewed clocks matter when leases and elections are at work: crash and pause the
                // leader meanwhile.
                let w = split(duration, 2);
                Plan {
                    episodes: vec![(w[0].clone(), Episode::NodeCrash), (w[1].clone(), Episode::NodePause)],
                    flaky_wan: None,
                    clock_skew: Some((whole, false)),
                }
            }
            Scenario::RollingRestart => one(Episode::RollingRestart { all: true }),
            Scenario::WipedRegion => one(Episode::WipedRegion { plus_node: rng.random_bool(0.8) }),
            Scenario::Mixed => Self::mixed(duration, without, rng),
        }
    }

    fn mixed(duration: Duration, without: &Without, rng: &mut SmallRng) -> Plan {
        let k = rng.random_range(2..=4u32);
        let windows = split(duration, k);
        let mut episodes = vec![];
        for (i, w) in windows.into_iter().enumerate() {
            let last = i as u32 == k - 1;
            // A wiped region stays out for the rest of the run, so it can only come last: any
            // region fault after it would be a second failed region.
            let e = loop {
                let e = match rng.random_range(0..100u32) {
                    0..26 => Episode::RegionOutage { at_ack: rng.random_bool(0.7), plus_node: rng.random_bool(0.5) },
                    26..37 => Episode::RegionPartition,
                    37..45 => Episode::RegionFreeze,
                    45..56 => Episode::NodeCrash,
                    56..65 => Episode::NodePause,
                    65..80 => Episode::DiskFaults { rot: !without.has("bit-rot") },
                    80..86 => Episode::RollingRestart { all: false },
                    _ => Episode::WipedRegion { plus_node: rng.random_bool(0.8) },
                };
                if (last || !matches!(e, Episode::WipedRegion { .. })) && without.allows(&e) {
                    break e;
                }
            };
            episodes.push((w, e));
        }
        let flaky_wan = rng.random_bool(0.3).then(|| {
            let a = duration.mul_f64(rng.random_range(0.0..0.5));
            window(a, a + duration.mul_f64(rng.random_range(0.2..0.5)).min(duration))
        });
        let mut clock_skew = rng.random_bool(0.3).then(|| (split(duration, 1).remove(0), false));
        // About one seed in ten leaves the budget on purpose.
        if rng.random_bool(0.1) && !without.has("beyond-budget") {
            match rng.random_range(0..4u32) {
                0 => {
                    let i = rng.random_range(0..episodes.len());
                    episodes[i].1 = Episode::TwoRegions;
                }
                1 => {
                    let i = rng.random_range(0..episodes.len());
                    episodes[i].1 = Episode::RegionPlusTwo;
                }
                2 => {
                    let i = rng.random_range(0..episodes.len());
                    episodes[i].1 = Episode::DoubleRot;
                }
                _ => clock_skew = Some((split(duration, 1).remove(0), true)),
            }
        }
        Plan { episodes, flaky_wan, clock_skew }
    }

    /// One line per episode and overlay, for the summary.
    pub fn describe(&self) -> Vec<String> {
        let w = |w: &Window| format!("{:.1}s..{:.1}s", w.start.as_secs_f64(), w.end.as_secs_f64());
        let mut out: Vec<String> = self.episodes.iter().map(|(win, e)| format!("{} {e:?}", w(win))).collect();
        if let Some(f) = &self.flaky_wan {
            out.push(format!("{} flaky WAN", w(f)));
        }
        if let Some((c, beyond)) = &self.clock_skew {
            out.push(format!("{} clock skew{}", w(c), if *beyond { " beyond the bound" } else { "" }));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn every_name_parses_back() {
        for n in Scenario::names() {
            assert_eq!(Scenario::parse(n).map(Scenario::name), Some(n));
        }
    }

    #[test]
    fn mixed_plans_vary_keep_a_wipe_last_and_fit_the_run() {
        let d = Duration::from_secs(60);
        let mut kinds = std::collections::BTreeSet::new();
        for seed in 0..300 {
            let p = Plan::draw(Scenario::Mixed, d, &Without::default(), &mut SmallRng::seed_from_u64(seed));
            for (i, (w, e)) in p.episodes.iter().enumerate() {
                assert!(w.start < w.end && w.end <= d);
                if matches!(e, Episode::WipedRegion { .. }) {
                    assert_eq!(i, p.episodes.len() - 1, "seed {seed}: a wipe must come last");
                }
                kinds.insert(format!("{e:?}").split([' ', '{']).next().unwrap_or_default().to_string());
            }
        }
        assert!(kinds.len() >= 9, "{kinds:?}");
    }

    #[test]
    fn without_leaves_kinds_out() {
        let w = Without::parse("wiped-region,bit-rot,beyond-budget,flaky-wan").expect("known kinds");
        for seed in 0..300 {
            let p = Plan::draw(Scenario::Mixed, Duration::from_secs(60), &w, &mut SmallRng::seed_from_u64(seed));
            assert!(p.flaky_wan.is_none());
            assert!(!p.clock_skew.is_some_and(|c| c.1));
            for (_, e) in &p.episodes {
                assert!(!matches!(
                    e,
                    Episode::WipedRegion { .. }
                        | Episode::DiskFaults { rot: true }
                        | Episode::TwoRegions
                        | Episode::RegionPlusTwo
                        | Episode::DoubleRot
                ));
            }
        }
        assert!(Without::parse("no-such-fault").is_err());
    }
}
