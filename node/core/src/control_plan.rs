//! The failover controller's plan for one tenant at one look (the meta leader's loop is
//! `node/src/node/controller.rs`): promote a sealed epoch, seal one whose voters lost their
//! quorum of live nodes, or move replicas toward the placement; and what record that move
//! commits. The shell carries the plan out ([`crate::promotion`] decides the promotion itself).

use crate::directory::{EventKind, Mode, TenantRecord};
use crate::placement::{Placement, ASYNC_PRIMARY_VOTERS};
use crate::NodeId;

/// What the controller does for one tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The epoch is sealed: promote a survivor (in `to_region` for a manual failover).
    Promote { to_region: Option<String>, kind: EventKind },
    /// A sync tenant: openraft's own election among the survivors fails it over.
    Nothing,
    /// A quorum of its voters is live: keep moving replicas toward the placement.
    MoveToPlacement,
    /// Its voters lost their quorum of live nodes: seal the epoch, then promote.
    SealAndPromote,
}

/// The step for `rec`, given which nodes' leases have certainly expired.
pub fn step(rec: &TenantRecord, expired: impl Fn(NodeId) -> bool) -> Step {
    if rec.sealed {
        return match rec.failover_to.as_deref() {
            Some(r) => Step::Promote { to_region: Some(r.to_string()), kind: EventKind::ManualFailover },
            None => Step::Promote { to_region: None, kind: EventKind::Failover },
        };
    }
    if rec.spec.mode == Mode::Sync {
        return Step::Nothing;
    }
    let live = rec.voters.iter().filter(|v| !expired(**v)).count();
    if live * 2 > rec.voters.len() {
        Step::MoveToPlacement
    } else {
        Step::SealAndPromote
    }
}

/// The record that seals `rec`'s epoch.
pub fn sealed(rec: &TenantRecord) -> TenantRecord {
    let mut s = rec.clone();
    s.sealed = true;
    s
}

/// After a promotion the new epoch's voters are its survivors; once it acks, placement moves
/// voters into the new primary region (the group's leader carries the change out). A region
/// without a replica (it was down when the epoch began, and is back) gets its learner. This only
/// adds, so that it never churns. None: nothing to change.
pub fn placement_move<'a>(
    rec: &TenantRecord,
    placed: &Placement,
    region_of: impl Fn(NodeId) -> Option<&'a str>,
) -> Option<TenantRecord> {
    let mut next = rec.clone();
    if rec.voters.len() < ASYNC_PRIMARY_VOTERS {
        // The founder stays a voter: it holds the seeded state and leads the group now.
        let mut voters = vec![rec.founder];
        voters.extend(placed.voters.iter().copied().filter(|v| *v != rec.founder));
        voters.truncate(ASYNC_PRIMARY_VOTERS);
        next.learners.retain(|l| !voters.contains(l));
        next.voters = voters;
    }
    let covered: Vec<String> = next.members().filter_map(|m| region_of(m).map(str::to_string)).collect();
    for l in &placed.learners {
        if region_of(*l).is_some_and(|r| !covered.iter().any(|c| c == r)) && !next.members().any(|m| m == *l) {
            next.learners.push(*l);
        }
    }
    if next.voters == rec.voters && next.learners == rec.learners {
        return None;
    }
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::{OnLag, TenantHealth, TenantSpec};

    fn region(n: NodeId) -> Option<&'static str> {
        ["eu", "us", "ap"].get(((n - 1) / 3) as usize).copied()
    }

    fn rec(mode: Mode, voters: &[NodeId], learners: &[NodeId]) -> TenantRecord {
        TenantRecord {
            spec: TenantSpec {
                name: "acme".into(),
                mode,
                primary: "us".into(),
                rpo_target_ms: 1000,
                on_lag: OnLag::Block,
                regions: vec![],
            },
            epoch: 2,
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            created_at_ms: 0,
            state: TenantHealth::Healthy,
            founder: voters[0],
            version: 4,
            base: None,
            sealed: false,
            failover_to: None,
            acked: None,
        }
    }

    #[test]
    fn steps() {
        let r = rec(Mode::NearSync, &[1, 2, 3], &[4]);
        assert_eq!(step(&r, |n| n == 1), Step::MoveToPlacement, "two of three live");
        assert_eq!(step(&r, |n| n != 3), Step::SealAndPromote);
        assert_eq!(step(&rec(Mode::Sync, &[1, 2, 4, 7, 8], &[]), |_| true), Step::Nothing);
        let mut s = sealed(&r);
        assert!(s.sealed);
        assert_eq!(step(&s, |_| false), Step::Promote { to_region: None, kind: EventKind::Failover });
        s.failover_to = Some("ap".into());
        assert_eq!(
            step(&s, |_| false),
            Step::Promote { to_region: Some("ap".into()), kind: EventKind::ManualFailover }
        );
    }

    #[test]
    fn a_promoted_epoch_gains_primary_voters_and_a_learner_where_a_region_lacks_one() {
        // Promoted node 4 (us) alone; 1 (eu) is its learner; ap has nobody.
        let r = rec(Mode::Async, &[4], &[1]);
        let placed = Placement { voters: vec![5, 4, 6], learners: vec![2, 7] };
        let next = placement_move(&r, &placed, region).expect("a change");
        assert_eq!(next.voters, vec![4, 5, 6]);
        assert_eq!(next.learners, vec![1, 7], "eu is covered by 1 already; ap gets 7");
        // Once there, nothing changes.
        assert_eq!(placement_move(&next, &placed, region), None);
    }

    #[test]
    fn a_learner_that_becomes_a_voter_leaves_the_learners() {
        let r = rec(Mode::Async, &[4], &[5, 1]);
        let placed = Placement { voters: vec![4, 5, 6], learners: vec![1] };
        let next = placement_move(&r, &placed, region).expect("a change");
        assert_eq!((next.voters, next.learners), (vec![4, 5, 6], vec![1]));
    }
}
