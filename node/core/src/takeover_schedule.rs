//! When a voter campaigns in a group whose leader went silent, and in which order the voters do
//! (the node's loop is `node/src/node/takeover.rs`; ARCHITECTURE.md tells why).
//!
//! Every voter that is not leading campaigns once lease + margin + its rank x step have passed
//! since it last accepted the leader's append. Ranks put voters outside the silent leader's region
//! first (a whole region is the failure the product is built for), then by node id, so normally
//! exactly one voter campaigns. The schedule is generic over the instant type: the node passes
//! the instants its raft layer stamps contacts with (the same clock openraft's lease runs on).

use std::ops::Add;
use std::time::Duration;

use crate::NodeId;

/// When a voter should campaign, given its rank among the voters eligible to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// After the leader's lease, so that every voter's lease has run out too (their last
    /// appends arrived up to a one-way delay later than ours).
    pub margin: Duration,
    /// Between ranks: time for one Pre-Vote and one vote round trip.
    pub step: Duration,
}

impl Schedule {
    pub fn from_heartbeat(heartbeat: Duration) -> Self {
        Self { margin: heartbeat / 2, step: heartbeat * 2 }
    }

    /// First campaign at `contact + lease + margin + rank x step`; then again every
    /// `voters x step` after the last campaign, so that ranks never campaign at the same moment.
    pub fn due<T>(&self, contact: T, lease: Duration, rank: usize, voters: usize, last: Option<T>) -> T
    where
        T: Copy + Ord + Add<Duration, Output = T>,
    {
        let first = contact + lease + self.margin + self.step * rank as u32;
        match last {
            Some(t) if t >= first => t + self.step * voters.max(1) as u32,
            _ => first,
        }
    }
}

/// The position of `me` among `voters` in campaign order: voters outside `leader`'s region
/// first, then by id; the silent leader itself is not ranked (None for it and for non-voters).
pub fn rank_of(
    me: NodeId,
    voters: &[NodeId],
    leader: Option<NodeId>,
    region_of: impl Fn(NodeId) -> Option<String>,
) -> Option<usize> {
    let leader_region = leader.and_then(&region_of);
    let mut order: Vec<(bool, NodeId)> = voters
        .iter()
        .filter(|v| Some(**v) != leader)
        .map(|v| (leader_region.is_some() && region_of(*v) == leader_region, *v))
        .collect();
    order.sort();
    order.iter().position(|(_, v)| *v == me)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn region(n: NodeId) -> Option<String> {
        // Nodes 1-3 in eu, 4-6 in us, 7-9 in ap.
        Some(["eu", "us", "ap"][((n - 1) / 3) as usize].to_string())
    }

    #[test]
    fn voters_outside_the_silent_leaders_region_rank_first() {
        let voters = [1, 2, 4, 7];
        assert_eq!(rank_of(4, &voters, Some(1), region), Some(0));
        assert_eq!(rank_of(7, &voters, Some(1), region), Some(1));
        assert_eq!(rank_of(2, &voters, Some(1), region), Some(2));
        assert_eq!(rank_of(1, &voters, Some(1), region), None, "the silent leader is not ranked");
        assert_eq!(rank_of(5, &voters, Some(1), region), None, "a non-voter is not ranked");
        // No known leader: by id.
        assert_eq!(rank_of(1, &voters, None, region), Some(0));
        assert_eq!(rank_of(7, &voters, None, region), Some(3));
    }

    #[test]
    fn ranks_campaign_in_turn_and_never_together() {
        let ms = Duration::from_millis;
        let s = Schedule::from_heartbeat(ms(300));
        let t0 = Duration::from_secs(1000);
        let lease = ms(2400);
        let first: Vec<Duration> = (0..3).map(|r| s.due(t0, lease, r, 3, None)).collect();
        assert_eq!(first[0], t0 + ms(2550));
        assert_eq!(first[1] - first[0], ms(600));
        // After campaigning, a rank waits a full round of all ranks: its retries interleave.
        let retry0 = s.due(t0, lease, 0, 3, Some(first[0]));
        assert_eq!(retry0, first[0] + ms(1800));
        assert!(retry0 > first[2]);
        let retry1 = s.due(t0, lease, 1, 3, Some(first[1]));
        assert_eq!(retry1 - retry0, ms(600));
        // A campaign from before the last contact does not count.
        assert_eq!(s.due(t0, lease, 0, 3, Some(t0 - ms(1))), first[0]);
    }

    proptest! {
        /// The ranks of the voters other than the silent leader are 0..n, each once, and every
        /// voter outside the leader's region ranks before every voter inside it.
        #[test]
        fn ranks_are_a_permutation_with_other_regions_first(
            voters in proptest::collection::btree_set(1u64..10, 1..9),
            leader in proptest::option::of(1u64..10),
        ) {
            let voters: Vec<NodeId> = voters.into_iter().collect();
            let ranked: Vec<(NodeId, usize)> =
                voters.iter().filter_map(|v| rank_of(*v, &voters, leader, region).map(|r| (*v, r))).collect();
            let ranks: BTreeSet<usize> = ranked.iter().map(|(_, r)| *r).collect();
            let eligible = voters.iter().filter(|v| Some(**v) != leader).count();
            prop_assert_eq!(ranks, (0..eligible).collect::<BTreeSet<_>>());
            if let Some(l) = leader {
                for (a, ra) in &ranked {
                    for (b, rb) in &ranked {
                        if region(*a) != region(l) && region(*b) == region(l) {
                            prop_assert!(ra < rb, "{} (elsewhere) must rank before {} (leader's region)", a, b);
                        }
                    }
                }
            }
        }

        /// No two ranks are ever due at the same instant, first campaign or retry.
        #[test]
        fn no_two_ranks_are_due_together(hb in 1u64..1000, lease in 0u64..5000, voters in 1usize..7, rounds in 0usize..4) {
            let ms = Duration::from_millis;
            let s = Schedule::from_heartbeat(ms(hb));
            let t0 = Duration::ZERO;
            let mut due = BTreeSet::new();
            for rank in 0..voters {
                let mut t = s.due(t0, ms(lease), rank, voters, None);
                prop_assert!(due.insert(t));
                for _ in 0..rounds {
                    t = s.due(t0, ms(lease), rank, voters, Some(t));
                    prop_assert!(due.insert(t));
                }
            }
        }
    }
}
