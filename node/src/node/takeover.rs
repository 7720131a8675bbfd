//! Fast takeover when a group's leader goes silent.
//!
//! openraft lets a follower campaign only once the leader's lease has run out *and* a random
//! election timeout has passed after it: with the WAN-sized defaults (lease 2.4 s, timeouts
//! 1.2-2.4 s) a dead leader is replaced 3.6-4.8 s after its last heartbeat, over the sync RTO
//! target. The lease is what keeps a live leader safe from disruption; the random wait after it
//! only spreads candidates apart so that their votes do not split.
//!
//! This loop replaces the random spread with a fixed order. Every voter that is not leading
//! notes when it last accepted the leader's append (`Group::last_leader_contact`, the moment
//! openraft renewed the lease here) and, once lease + margin + its rank x step have passed
//! without another, asks openraft for a Pre-Vote round (`Group::campaign`). Ranks put voters
//! outside the silent leader's region first (a whole region is the failure the product is
//! built for), then by node id, so normally exactly one voter campaigns and wins in two round
//! trips. Nothing here bypasses openraft's rules: a voter that still hears a leader refuses the
//! Pre-Vote, the candidate refuses to start while its own lease is valid, and the vote needs
//! an up-to-date log, so this changes when a campaign starts, never who may win it. openraft's
//! own election timer stays armed as the fallback.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::Node;
use crate::raft::group::Group;
use crate::raft::state_machine::GroupState;
use crate::seams::net::NodeId;

/// How often the loop looks at every group.
pub(super) const TAKEOVER_EVERY: Duration = Duration::from_millis(50);

/// This loop's memory: when each group last campaigned here.
#[derive(Default)]
pub(super) struct Takeover {
    campaigned: HashMap<String, Instant>,
}

/// When this voter should campaign, given the ranks of the voters eligible to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Schedule {
    /// After the leader's lease, so that every voter's lease has run out too (their last
    /// appends arrived up to a one-way delay later than ours).
    margin: Duration,
    /// Between ranks: time for one Pre-Vote and one vote round trip.
    step: Duration,
}

impl Schedule {
    fn from_heartbeat(heartbeat: Duration) -> Self {
        Self { margin: heartbeat / 2, step: heartbeat * 2 }
    }

    /// First campaign at `contact + lease + margin + rank x step`; then again every
    /// `voters x step`, so that ranks never campaign at the same moment.
    fn due(&self, contact: Instant, lease: Duration, rank: usize, voters: usize, last: Option<Instant>) -> Instant {
        let first = contact + lease + self.margin + self.step * rank as u32;
        match last {
            Some(t) if t >= first => t + self.step * voters.max(1) as u32,
            _ => first,
        }
    }
}

/// The position of `me` among `voters` in campaign order: voters outside `leader`'s region
/// first, then by id; the silent leader itself is not ranked (None for it and for non-voters).
fn rank_of(
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

impl Node {
    /// One look at every group this node votes in; campaigns where a leader went silent.
    pub(super) async fn takeover_once(&self, state: &mut Takeover) {
        self.takeover_group(&self.inner.meta, state).await;
        let tenants: Vec<_> = self.inner.tenants.lock().expect("tenants lock").values().cloned().collect();
        for g in tenants {
            self.takeover_group(&g, state).await;
        }
    }

    async fn takeover_group<S: GroupState>(&self, g: &Group<S>, state: &mut Takeover) {
        let me = self.inner.me;
        let Some(contact) = g.last_leader_contact() else { return };
        let schedule = Schedule::from_heartbeat(Duration::from_millis(self.inner.cfg.raft.heartbeat_interval_ms));
        let now = Instant::now();
        // Cheap looks first (this runs every 50 ms for every group): nothing to do while the
        // leader's lease runs here, or while this node leads.
        if now < schedule.due(contact, g.leader_lease(), 0, 1, None) {
            return;
        }
        if g.term_leader().1 == Some(me) {
            state.campaigned.remove(&g.name);
            return;
        }
        let st = g.status();
        if st.is_leader || !st.voters.contains(&me) {
            state.campaigned.remove(&g.name);
            return;
        }
        let voters: Vec<NodeId> = st.voters.iter().copied().collect();
        let Some(rank) = rank_of(me, &voters, st.leader, |n| self.region_of(n).map(str::to_string)) else { return };
        let last = state.campaigned.get(&g.name).copied().filter(|t| *t > contact);
        let due = schedule.due(contact, g.leader_lease(), rank, voters.len(), last);
        if now < due {
            return;
        }
        tracing::info!(
            group = %g.name,
            silent_leader = ?st.leader,
            rank,
            silent_ms = (now - contact).as_millis() as u64,
            "leader silent past its lease: campaigning"
        );
        state.campaigned.insert(g.name.clone(), now);
        g.campaign().await;
    }
}

#[cfg(test)]
mod tests {
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
        let s = Schedule::from_heartbeat(Duration::from_millis(300));
        let t0 = Instant::now();
        let lease = Duration::from_millis(2400);
        let first: Vec<Instant> = (0..3).map(|r| s.due(t0, lease, r, 3, None)).collect();
        assert_eq!(first[0], t0 + Duration::from_millis(2550));
        assert_eq!(first[1] - first[0], Duration::from_millis(600));
        // After campaigning, a rank waits a full round of all ranks: its retries interleave.
        let retry0 = s.due(t0, lease, 0, 3, Some(first[0]));
        assert_eq!(retry0, first[0] + Duration::from_millis(1800));
        assert!(retry0 > first[2]);
        let retry1 = s.due(t0, lease, 1, 3, Some(first[1]));
        assert_eq!(retry1 - retry0, Duration::from_millis(600));
        // A campaign from before the last contact does not count.
        assert_eq!(s.due(t0, lease, 0, 3, Some(t0 - Duration::from_millis(1))), first[0]);
    }
}
