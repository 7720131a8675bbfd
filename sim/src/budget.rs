//! The fault budget: the faults the design promises to survive, tracked over a run.
//!
//! Within the budget, at every instant: at most one region failed (any of its nodes crashed,
//! stopped, paused or wiped, or the region cut off in either direction) plus at most one more node
//! down anywhere else; bit rot on at most one copy of anything; and clocks within the configured
//! bound: monotonic rates no further apart than `max_clock_drift_ms` per `period_ms` of liveness,
//! and wall-clock offsets no larger than `max_clock_drift_ms`. A seed that stayed within the budget
//! has every claim checked; a seed that left it has only the safety invariants checked.
//!
//! This module is pure: the fault driver reports every change and the budget says whether the
//! world is still within it.

use std::collections::{BTreeMap, BTreeSet};

use tetrad_node::config::LivenessTuning;
use tetrad_node::seams::net::NodeId;

use crate::clock::ClockSettings;

#[derive(Clone, Debug)]
pub struct Budget {
    region_of: BTreeMap<NodeId, usize>,
    /// Impaired nodes and why.
    down: BTreeMap<NodeId, String>,
    /// Regions cut off (in either direction).
    cut: BTreeSet<usize>,
    rot_copies: u32,
    clocks: BTreeMap<NodeId, ClockSettings>,
    max_rate_spread_ppm: i64,
    max_offset_ms: i64,
    breach: Option<(u64, String)>,
}

impl Budget {
    pub fn new(region_of: BTreeMap<NodeId, usize>, liveness: &LivenessTuning) -> Self {
        let period = liveness.period_ms.max(1) as i64;
        let drift = liveness.max_clock_drift_ms as i64;
        Self {
            region_of,
            down: BTreeMap::new(),
            cut: BTreeSet::new(),
            rot_copies: 0,
            clocks: BTreeMap::new(),
            max_rate_spread_ppm: drift * 1_000_000 / period,
            max_offset_ms: drift,
            breach: None,
        }
    }

    /// The largest spread of monotonic clock rates within the budget (ppm).
    pub fn max_rate_spread_ppm(&self) -> i64 {
        self.max_rate_spread_ppm
    }

    pub fn max_offset_ms(&self) -> i64 {
        self.max_offset_ms
    }

    /// A node became impaired (`Some(why)`) or whole again (`None`).
    pub fn node(&mut self, at_ms: u64, id: NodeId, impaired: Option<&str>) {
        match impaired {
            Some(why) => {
                self.down.insert(id, why.to_string());
            }
            None => {
                self.down.remove(&id);
            }
        }
        self.check(at_ms);
    }

    pub fn region_cut(&mut self, at_ms: u64, region: usize, cut: bool) {
        if cut {
            self.cut.insert(region);
        } else {
            self.cut.remove(&region);
        }
        self.check(at_ms);
    }

    /// One more copy of something rotted.
    pub fn rot(&mut self, at_ms: u64) {
        self.rot_copies += 1;
        self.check(at_ms);
    }

    pub fn clock(&mut self, at_ms: u64, id: NodeId, s: ClockSettings) {
        self.clocks.insert(id, s);
        self.check(at_ms);
    }

    /// Why the world is beyond the budget now, if it is.
    pub fn beyond_now(&self) -> Option<String> {
        let impaired: BTreeSet<NodeId> = self
            .down
            .keys()
            .copied()
            .chain(self.region_of.iter().filter(|(_, r)| self.cut.contains(r)).map(|(id, _)| *id))
            .collect();
        let regions: BTreeSet<usize> = self.region_of.values().copied().collect();
        // Some region may take the blame for everything but one node.
        let fits = regions.iter().any(|&r| {
            self.cut.iter().all(|c| *c == r)
                && impaired.iter().filter(|id| self.region_of.get(id) != Some(&r)).count() <= 1
        });
        if !fits {
            let list: Vec<String> = impaired
                .iter()
                .map(|id| format!("{id} ({})", self.down.get(id).map(String::as_str).unwrap_or("cut off")))
                .collect();
            return Some(format!("more than one region plus one node impaired: {}", list.join(", ")));
        }
        if self.rot_copies > 1 {
            return Some(format!("bit rot on {} copies", self.rot_copies));
        }
        let rates: Vec<i64> = self.clocks.values().map(|c| c.rate_ppm).chain([0]).collect();
        let spread = rates.iter().max().unwrap_or(&0) - rates.iter().min().unwrap_or(&0);
        if spread > self.max_rate_spread_ppm {
            return Some(format!("clock rates {spread} ppm apart (bound {} ppm)", self.max_rate_spread_ppm));
        }
        if let Some((id, c)) = self.clocks.iter().find(|(_, c)| c.wall_offset_ms.abs() > self.max_offset_ms) {
            return Some(format!(
                "node {id}'s wall clock is {} ms off (bound {} ms)",
                c.wall_offset_ms, self.max_offset_ms
            ));
        }
        None
    }

    fn check(&mut self, at_ms: u64) {
        if self.breach.is_none() {
            if let Some(why) = self.beyond_now() {
                self.breach = Some((at_ms, why));
            }
        }
    }

    pub fn within(&self) -> bool {
        self.breach.is_none()
    }

    /// When and why the run first left the budget.
    pub fn breach(&self) -> Option<&(u64, String)> {
        self.breach.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> Budget {
        let regions = (0..4u64).flat_map(|r| (1..=3).map(move |k| ((r + 1) * 100 + k, r as usize))).collect();
        Budget::new(regions, &LivenessTuning::default())
    }

    #[test]
    fn one_region_plus_one_node_is_within_and_one_more_node_is_not() {
        let mut b = budget();
        for id in [101, 102, 103] {
            b.node(1, id, Some("crashed"));
        }
        b.node(2, 201, Some("paused"));
        assert!(b.within());
        b.node(3, 301, Some("crashed"));
        assert!(!b.within());
        assert_eq!(b.breach().map(|x| x.0), Some(3));
    }

    #[test]
    fn a_cut_region_counts_as_the_failed_region() {
        let mut b = budget();
        b.region_cut(1, 2, true);
        b.node(2, 101, Some("crashed"));
        assert!(b.within());
        b.region_cut(3, 1, true);
        assert!(!b.within());
    }

    #[test]
    fn two_nodes_of_two_regions_are_within() {
        let mut b = budget();
        b.node(1, 101, Some("crashed"));
        b.node(1, 401, Some("crashed"));
        assert!(b.within());
        b.node(2, 101, None);
        b.node(2, 201, Some("crashed"));
        b.node(2, 202, Some("crashed"));
        assert!(b.within(), "two of one region plus one of another");
    }

    #[test]
    fn rot_and_clocks_have_bounds() {
        let mut b = budget();
        b.rot(1);
        b.clock(1, 101, ClockSettings { wall_offset_ms: 400, rate_ppm: 60_000 });
        b.clock(1, 102, ClockSettings { wall_offset_ms: -400, rate_ppm: -60_000 });
        assert!(b.within(), "{:?}", b.breach());
        b.clock(2, 103, ClockSettings { wall_offset_ms: 0, rate_ppm: 70_000 });
        assert!(!b.within());
        let mut b = budget();
        b.rot(1);
        b.rot(2);
        assert!(!b.within());
    }
}
