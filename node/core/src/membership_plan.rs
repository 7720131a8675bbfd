//! A tenant group's leader moving its membership toward the directory's record (the reconcile
//! loop's plan; `node/src/node/reconcile.rs`, `reconcile_membership`, carries it out): learners
//! first, voters once caught up, then extra learners out, then the lead into the primary region.
//! Also whom a fenced leader hands its lead to.

use std::collections::{BTreeMap, BTreeSet};

use crate::directory::TenantRecord;
use crate::NodeId;

/// A voter counts as caught up for a voter change when its matched index is at most this many
/// entries behind the leader's last index.
pub const CATCH_UP_SLACK: u64 = 8;

/// The group as its leader sees it (the raft layer's status, in plain values).
#[derive(Clone, Copy, Debug)]
pub struct GroupView<'a> {
    pub voters: &'a BTreeSet<NodeId>,
    pub learners: &'a BTreeSet<NodeId>,
    /// Matched (flushed) log index per member, as the leader knows it.
    pub matched: &'a BTreeMap<NodeId, Option<u64>>,
    pub last_index: u64,
    pub applied_index: u64,
    pub purged_index: Option<u64>,
}

impl GroupView<'_> {
    fn matched(&self, n: NodeId) -> Option<u64> {
        self.matched.get(&n).copied().flatten()
    }
}

/// The one change the leader makes now (the next reconcile tick makes the next).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipStep {
    /// Add these members as learners, in order; first snapshot and purge the log up to
    /// `purge_upto` when given (a promoted epoch's seeded state lives only in its snapshot, so
    /// every member added must be caught up by that snapshot).
    AddLearners { purge_upto: Option<u64>, add: Vec<NodeId> },
    /// Make the record's voters the group's voters (every one of them is caught up).
    ChangeVoters(Vec<NodeId>),
    /// The voters differ from the record's, but some wanted voter is not caught up yet.
    WaitForCatchUp,
    /// Remove learners the record no longer lists.
    RemoveLearners(Vec<NodeId>),
    /// Hand the lead to this voter in the primary region, which holds everything.
    TransferLead(NodeId),
    /// The membership and the lead are where the record wants them (or no voter can take the
    /// lead yet).
    Nothing,
}

/// The next membership step of the group's leader `me` toward `rec`.
pub fn membership_step<'a>(
    rec: &TenantRecord,
    g: &GroupView<'_>,
    me: NodeId,
    region_of: impl Fn(NodeId) -> Option<&'a str>,
) -> MembershipStep {
    let want_voters: BTreeSet<NodeId> = rec.voters.iter().copied().collect();
    let want_all: BTreeSet<NodeId> = rec.members().collect();
    let have_all: BTreeSet<NodeId> = g.voters.union(g.learners).copied().collect();
    let missing: Vec<NodeId> = want_all.difference(&have_all).copied().collect();
    if !missing.is_empty() {
        if rec.base.is_some() && g.purged_index.is_none() {
            // A promoted epoch's seeded state is in no log entry: a member added before the log
            // is purged would replicate the entries alone and never get it (sim seed 7211: a
            // learner added before the founder had applied anything lacked all 147 seeded
            // writes, and was later promoted). Wait until something is applied, then purge.
            if g.applied_index == 0 {
                return MembershipStep::Nothing;
            }
            return MembershipStep::AddLearners { purge_upto: Some(g.applied_index), add: missing };
        }
        return MembershipStep::AddLearners { purge_upto: None, add: missing };
    }
    if *g.voters != want_voters {
        let caught_up =
            want_voters.iter().all(|v| *v == me || g.matched(*v).is_some_and(|i| i + CATCH_UP_SLACK >= g.last_index));
        return if caught_up {
            MembershipStep::ChangeVoters(rec.voters.clone())
        } else {
            MembershipStep::WaitForCatchUp
        };
    }
    let extra: Vec<NodeId> = g.learners.difference(&want_all).copied().collect();
    if !extra.is_empty() {
        return MembershipStep::RemoveLearners(extra);
    }
    // The leader belongs in the primary region: a sync tenant's leader hands over once a
    // primary voter holds everything; any mode's leader does when placement moved it out.
    let my_region = region_of(me).unwrap_or_default();
    if my_region != rec.spec.primary || !want_voters.contains(&me) {
        let target = rec
            .voters
            .iter()
            .copied()
            .find(|v| region_of(*v) == Some(rec.spec.primary.as_str()) && g.matched(*v) == Some(g.last_index));
        if let Some(t) = target {
            return MembershipStep::TransferLead(t);
        }
    }
    MembershipStep::Nothing
}

/// Whom a leader that cannot ack (its lease lapsed) hands its lead to: the voter outside its
/// region, else any voter, whose log is the furthest along (by id on ties, the highest).
pub fn handover_target<'a>(
    me: NodeId,
    voters: &BTreeSet<NodeId>,
    matched: &BTreeMap<NodeId, Option<u64>>,
    region_of: impl Fn(NodeId) -> Option<&'a str>,
) -> Option<NodeId> {
    let my_region = region_of(me).unwrap_or_default();
    voters
        .iter()
        .filter(|v| **v != me)
        .max_by_key(|v| (region_of(**v) != Some(my_region), matched.get(v).copied().flatten(), **v))
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::{AckMark, EpochBase, Mode, OnLag, TenantHealth, TenantSpec};

    fn region(n: NodeId) -> Option<&'static str> {
        ["eu", "us", "ap"].get(((n - 1) / 3) as usize).copied()
    }

    fn rec(voters: &[NodeId], learners: &[NodeId]) -> TenantRecord {
        TenantRecord {
            spec: TenantSpec {
                name: "acme".into(),
                mode: Mode::Sync,
                primary: "eu".into(),
                rpo_target_ms: 0,
                on_lag: OnLag::Block,
                regions: vec![],
            },
            epoch: 1,
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            created_at_ms: 0,
            state: TenantHealth::Healthy,
            founder: voters[0],
            version: 0,
            base: None,
            sealed: false,
            failover_to: None,
            acked: None,
        }
    }

    struct G {
        voters: BTreeSet<NodeId>,
        learners: BTreeSet<NodeId>,
        matched: BTreeMap<NodeId, Option<u64>>,
    }

    fn g(voters: &[NodeId], learners: &[NodeId], matched: &[(NodeId, u64)]) -> G {
        G {
            voters: voters.iter().copied().collect(),
            learners: learners.iter().copied().collect(),
            matched: matched.iter().map(|(n, i)| (*n, Some(*i))).collect(),
        }
    }

    fn view(g: &G, purged: Option<u64>) -> GroupView<'_> {
        GroupView {
            voters: &g.voters,
            learners: &g.learners,
            matched: &g.matched,
            last_index: 100,
            applied_index: 90,
            purged_index: purged,
        }
    }

    #[test]
    fn learners_first_and_a_promoted_epoch_purges_before_adding_them() {
        let mut r = rec(&[1], &[4, 7]);
        let s = g(&[1], &[], &[(1, 100)]);
        assert_eq!(
            membership_step(&r, &view(&s, None), 1, region),
            MembershipStep::AddLearners { purge_upto: None, add: vec![4, 7] }
        );
        r.base = Some(EpochBase { from_epoch: 1, node: 1, last: AckMark::default() });
        assert_eq!(
            membership_step(&r, &view(&s, None), 1, region),
            MembershipStep::AddLearners { purge_upto: Some(90), add: vec![4, 7] }
        );
        assert_eq!(
            membership_step(&r, &view(&s, Some(90)), 1, region),
            MembershipStep::AddLearners { purge_upto: None, add: vec![4, 7] },
            "purged once already"
        );
        // Right after the founder initialised the group nothing is applied yet: no member may
        // join before the seeded state is in a snapshot (seed 7211).
        let fresh = GroupView { applied_index: 0, ..view(&s, None) };
        assert_eq!(membership_step(&r, &fresh, 1, region), MembershipStep::Nothing);
    }

    #[test]
    fn voters_change_once_every_wanted_voter_is_caught_up() {
        let r = rec(&[1, 2, 4], &[]);
        let behind = g(&[1], &[2, 4], &[(2, 91), (4, 100)]);
        assert_eq!(membership_step(&r, &view(&behind, None), 1, region), MembershipStep::WaitForCatchUp);
        let close = g(&[1], &[2, 4], &[(2, 92), (4, 100)]);
        assert_eq!(membership_step(&r, &view(&close, None), 1, region), MembershipStep::ChangeVoters(vec![1, 2, 4]));
    }

    #[test]
    fn extra_learners_leave_then_the_lead_goes_to_the_primary_region() {
        let r = rec(&[1, 2, 4], &[]);
        let extra = g(&[1, 2, 4], &[7], &[]);
        assert_eq!(membership_step(&r, &view(&extra, None), 4, region), MembershipStep::RemoveLearners(vec![7]));
        // Led from us (4): 1 lags, 2 holds everything.
        let s = g(&[1, 2, 4], &[], &[(1, 99), (2, 100)]);
        assert_eq!(membership_step(&r, &view(&s, None), 4, region), MembershipStep::TransferLead(2));
        assert_eq!(membership_step(&r, &view(&s, None), 1, region), MembershipStep::Nothing, "led from eu already");
        let none = g(&[1, 2, 4], &[], &[(1, 99), (2, 98)]);
        assert_eq!(membership_step(&r, &view(&none, None), 4, region), MembershipStep::Nothing);
    }

    #[test]
    fn a_fenced_leader_hands_over_outside_its_region_to_the_furthest_log() {
        let voters: BTreeSet<NodeId> = [1, 2, 4, 7].into();
        let matched = BTreeMap::from([(2, Some(100)), (4, Some(90)), (7, Some(95))]);
        assert_eq!(handover_target(1, &voters, &matched, region), Some(7));
        let only_home: BTreeSet<NodeId> = [1, 2].into();
        assert_eq!(handover_target(1, &only_home, &matched, region), Some(2));
        assert_eq!(handover_target(1, &[1].into(), &matched, region), None);
    }
}
