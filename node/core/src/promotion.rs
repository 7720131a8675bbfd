//! Promotion (DESIGN.md, "Promotion" and "Loss accounting"): once the meta leader has sealed what
//! it could reach of a tenant's old epoch, which replica starts the next epoch, from where, and
//! what the failover records about the writes it may have lost.
//!
//! The node's shell (`node/src/node/controller.rs`) asks the replicas to seal and collects their
//! answers; [`choose`] decides from them (fencing first), and [`next_epoch`] writes the record
//! and the event that the shell commits in the meta group.

use std::collections::BTreeMap;

use crate::directory::{AckMark, EpochBase, EventKind, TenantEvent, TenantHealth, TenantRecord};
use crate::NodeId;

/// What each replica answered to the seal: None when it holds no log of the tenant, else the
/// epoch whose log it holds (the sealed one or, when it never started that, the newest earlier
/// one) and where that log ends.
pub type SealAnswers = BTreeMap<NodeId, Option<(u64, AckMark)>>;

/// How the replica to promote is picked among the candidates (normally [`pick_best`]).
pub type Pick = fn(&[(NodeId, AckMark)]) -> Option<(NodeId, AckMark)>;

/// Why a promotion cannot happen yet. The controller retries on its next look.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotYet {
    #[error("old-epoch voters {0:?} are neither sealed nor past their liveness; waiting for their leases to expire")]
    Unfenced(Vec<NodeId>),
    #[error("no sealed replica of {group} in region {region} answered")]
    NoneInRegion { group: String, region: String },
    #[error("no sealed replica of {group} answered")]
    NoneAnswered { group: String },
}

/// The replica that starts the next epoch, and what the record needs to know of the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub best: NodeId,
    /// Where its durable log ends: the new epoch's base.
    pub mark: AckMark,
    /// The epoch whose log it holds.
    pub from_epoch: u64,
    /// The region it is in: the tenant's primary region from now on.
    pub region: String,
    /// The other replicas that answered with a log: the new epoch's learners.
    pub survivors: Vec<NodeId>,
    /// Every replica that answered the seal.
    pub sealed: Vec<NodeId>,
}

/// Picks the replica to promote: the most recent durable log by (term, index); on a tie the one
/// with more writes, then the lowest node id.
pub fn pick_best(answers: &[(NodeId, AckMark)]) -> Option<(NodeId, AckMark)> {
    answers.iter().max_by_key(|(n, m)| (m.position(), m.writes, std::cmp::Reverse(*n))).copied()
}

/// Writes the old leader reported as acked that the new epoch lacks: those past `base` by
/// (term, index). Zero when the report is not past the base (or there is none).
pub fn lost_writes_min(reported: Option<AckMark>, base: &AckMark) -> u64 {
    match reported {
        Some(a) if a.position() > base.position() => a.writes.saturating_sub(base.writes),
        _ => 0,
    }
}

/// The span in which every lost acked write was acked: from the proposal of the newest entry the
/// new epoch holds to the end of the old voters' last lease (never before its start).
pub fn loss_window(base: &AckMark, lease_end_ms: u64) -> (u64, u64) {
    (base.proposed_at_ms, lease_end_ms.max(base.proposed_at_ms))
}

/// Decides whom to promote from the seal's answers. Fencing first: every old voter must have
/// answered (it is sealed) or be past its lease (`expired`). Only the newest epoch anyone holds
/// counts (logs of different epochs are different groups), and a manual failover's target
/// region restricts the candidates.
pub fn choose<'a>(
    rec: &TenantRecord,
    answers: &SealAnswers,
    to_region: Option<&str>,
    expired: impl Fn(NodeId) -> bool,
    region_of: impl Fn(NodeId) -> Option<&'a str>,
    pick: Pick,
) -> Result<Choice, NotYet> {
    let unfenced: Vec<NodeId> =
        rec.voters.iter().copied().filter(|v| !answers.contains_key(v) && !expired(*v)).collect();
    if !unfenced.is_empty() {
        return Err(NotYet::Unfenced(unfenced));
    }
    let newest = answers.values().flatten().map(|(e, _)| *e).max();
    let candidates: Vec<(NodeId, AckMark)> = answers
        .iter()
        .filter_map(|(n, m)| m.filter(|(e, _)| Some(*e) == newest).map(|(_, k)| (*n, k)))
        .filter(|(n, _)| to_region.is_none_or(|r| region_of(*n) == Some(r)))
        .collect();
    let from_epoch = newest.unwrap_or(rec.epoch);
    if newest.is_none() {
        if let Some(best) = empty_start(rec, answers, to_region, &expired, &region_of) {
            return Ok(Choice {
                best,
                mark: AckMark::default(),
                from_epoch,
                region: region_of(best).unwrap_or_default().to_string(),
                survivors: vec![],
                sealed: answers.keys().copied().collect(),
            });
        }
    }
    let Some((best, mark)) = pick(&candidates) else {
        let group = rec.group();
        return Err(match to_region {
            Some(r) => NotYet::NoneInRegion { group, region: r.to_string() },
            None => NotYet::NoneAnswered { group },
        });
    };
    Ok(Choice {
        best,
        mark,
        from_epoch,
        region: region_of(best).unwrap_or_default().to_string(),
        survivors: answers.iter().filter(|(n, m)| m.is_some() && **n != best).map(|(n, _)| *n).collect(),
        sealed: answers.keys().copied().collect(),
    })
}

/// The replica an empty next epoch starts from when every member of the old epoch either
/// answered the seal holding no log of the tenant or is past its lease: learners that never
/// received an entry (a region lost seconds after the tenant was created, with its learners
/// behind), or replicas that lost their storage. Nothing that survives holds a write, so waiting
/// cannot recover one and would keep the tenant unavailable for good; the new epoch starts empty,
/// and its loss record counts everything the old leader reported acked (its window starts at 0).
/// A member that may still answer (not expired) is waited for: it may hold the log. The lowest
/// node id in `to_region` (when given) is taken.
fn empty_start<'a>(
    rec: &TenantRecord,
    answers: &SealAnswers,
    to_region: Option<&str>,
    expired: &impl Fn(NodeId) -> bool,
    region_of: &impl Fn(NodeId) -> Option<&'a str>,
) -> Option<NodeId> {
    if !rec.members().all(|m| answers.contains_key(&m) || expired(m)) {
        return None;
    }
    answers
        .iter()
        .filter(|(n, a)| a.is_none() && to_region.is_none_or(|r| region_of(**n) == Some(r)))
        .map(|(n, _)| *n)
        .next()
}

/// What the old epoch's leases say, for the event: the old voters' newest liveness renewal and
/// when the last of their leases ends (wall ms; `MetaState::old_leases`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OldLeases {
    pub last_renewal_ms: u64,
    pub lease_end_ms: u64,
}

/// The next epoch's record and the failover event committed with it. `founder` = the chosen
/// replica, first voter it alone, learners the other survivors, primary its region, base its
/// mark; the event carries the loss record: `lost_writes_min` from `reported` (the old leader's
/// newest reported ack) and the window of [`loss_window`].
pub fn next_epoch(
    rec: &TenantRecord,
    choice: &Choice,
    kind: EventKind,
    now_ms: u64,
    leases: OldLeases,
    reported: Option<AckMark>,
) -> (TenantRecord, TenantEvent) {
    let Choice { best, mark, from_epoch, region, survivors, sealed } = choice;
    let mut next = rec.clone();
    next.epoch = rec.epoch + 1;
    next.founder = *best;
    next.voters = vec![*best];
    next.learners = survivors.clone();
    next.spec.primary = region.clone();
    next.sealed = false;
    next.failover_to = None;
    next.state = TenantHealth::Healthy;
    next.acked = None;
    next.base = Some(EpochBase { from_epoch: *from_epoch, node: *best, last: *mark });
    let mut ev = TenantEvent::new(
        kind,
        now_ms,
        rec.epoch,
        next.epoch,
        format!(
            "promoted node {best} in {region} from ({}, {}) with {} writes; sealed replicas: {sealed:?}; first voters [{best}], learners {survivors:?}",
            mark.term, mark.index, mark.writes,
        ),
    );
    ev.failed_at_ms = Some(leases.last_renewal_ms.min(now_ms));
    ev.lost_writes_min = Some(lost_writes_min(reported, mark));
    let (start, end) = loss_window(mark, leases.lease_end_ms);
    ev.loss_window_start_ms = Some(start);
    ev.loss_window_end_ms = Some(end);
    ev.old_voters = rec.voters.clone();
    (next, ev)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::directory::{Mode, OnLag, TenantSpec};

    fn m(term: u64, index: u64, writes: u64) -> AckMark {
        AckMark { term, index, writes, proposed_at_ms: 0 }
    }

    fn region(n: NodeId) -> Option<&'static str> {
        ["eu", "us", "ap"].get(((n - 1) / 3) as usize).copied()
    }

    /// An async tenant "acme" at epoch 3, voters 1-3 (eu), learners 4 (us) and 7 (ap).
    fn acme() -> TenantRecord {
        TenantRecord {
            spec: TenantSpec {
                name: "acme".into(),
                mode: Mode::Async,
                primary: "eu".into(),
                rpo_target_ms: 0,
                on_lag: OnLag::Block,
                regions: vec![],
            },
            epoch: 3,
            voters: vec![1, 2, 3],
            learners: vec![4, 7],
            created_at_ms: 5,
            state: TenantHealth::Degraded,
            founder: 1,
            version: 8,
            base: None,
            sealed: true,
            failover_to: None,
            acked: Some(m(2, 40, 30)),
        }
    }

    #[test]
    fn promotion_picks_the_highest_term_then_index() {
        let answers = [(1, m(3, 10, 5)), (2, m(4, 8, 4)), (3, m(3, 12, 6))];
        assert_eq!(pick_best(&answers).map(|b| b.0), Some(2), "(term, index), not the bare index");
        assert_eq!(pick_best(&[(5, m(1, 1, 1)), (2, m(1, 1, 1))]).map(|b| b.0), Some(2), "ties: lowest id");
        assert_eq!(pick_best(&[]), None);
    }

    #[test]
    fn loss_minimum_counts_reported_acks_past_the_base() {
        assert_eq!(lost_writes_min(Some(m(2, 30, 20)), &m(2, 25, 17)), 3);
        assert_eq!(lost_writes_min(Some(m(2, 20, 15)), &m(2, 25, 17)), 0);
        assert_eq!(lost_writes_min(None, &m(2, 25, 17)), 0);
        // A later term is past the base whatever its index.
        assert_eq!(lost_writes_min(Some(m(3, 2, 19)), &m(2, 25, 17)), 2);
    }

    #[test]
    fn a_voter_neither_sealed_nor_expired_holds_the_promotion() {
        let answers = SealAnswers::from([(1, Some((3, m(2, 38, 29)))), (4, Some((3, m(2, 35, 27))))]);
        let r = choose(&acme(), &answers, None, |n| n == 2, region, pick_best);
        assert_eq!(r, Err(NotYet::Unfenced(vec![3])));
        assert_eq!(
            r.unwrap_err().to_string(),
            "old-epoch voters [3] are neither sealed nor past their liveness; waiting for their leases to expire"
        );
    }

    #[test]
    fn the_exact_plan_of_an_automatic_failover() {
        let rec = acme();
        // 1 holds the longest log; 2 answered for an older epoch only; 3 holds nothing; 7 is behind.
        let answers = SealAnswers::from([
            (1, Some((3, AckMark { proposed_at_ms: 9_000, ..m(2, 38, 29) }))),
            (2, Some((2, m(1, 90, 70)))),
            (3, None),
            (7, Some((3, m(2, 35, 27)))),
        ]);
        let c = choose(&rec, &answers, None, |_| false, region, pick_best).unwrap();
        assert_eq!(
            c,
            Choice {
                best: 1,
                mark: AckMark { proposed_at_ms: 9_000, ..m(2, 38, 29) },
                from_epoch: 3,
                region: "eu".into(),
                survivors: vec![2, 7],
                sealed: vec![1, 2, 3, 7],
            }
        );
        let leases = OldLeases { last_renewal_ms: 9_500, lease_end_ms: 14_000 };
        let (next, ev) = next_epoch(&rec, &c, EventKind::Failover, 20_000, leases, rec.acked);
        let mut want = rec.clone();
        want.epoch = 4;
        want.founder = 1;
        want.voters = vec![1];
        want.learners = vec![2, 7];
        want.sealed = false;
        want.state = TenantHealth::Healthy;
        want.acked = None;
        want.base = Some(EpochBase { from_epoch: 3, node: 1, last: c.mark });
        assert_eq!(next, want);
        let mut want_ev = TenantEvent::new(
            EventKind::Failover,
            20_000,
            3,
            4,
            "promoted node 1 in eu from (2, 38) with 29 writes; sealed replicas: [1, 2, 3, 7]; first voters [1], learners [2, 7]".into(),
        );
        want_ev.failed_at_ms = Some(9_500);
        want_ev.lost_writes_min = Some(1);
        want_ev.loss_window_start_ms = Some(9_000);
        want_ev.loss_window_end_ms = Some(14_000);
        want_ev.old_voters = vec![1, 2, 3];
        assert_eq!(ev, want_ev);
    }

    #[test]
    fn a_manual_failover_promotes_in_its_target_region_or_not_at_all() {
        let rec = acme();
        let answers = SealAnswers::from([(1, Some((3, m(2, 38, 29)))), (4, Some((3, m(2, 35, 27))))]);
        let c = choose(&rec, &answers, Some("us"), |_| true, region, pick_best).unwrap();
        assert_eq!((c.best, c.region.as_str(), c.survivors.clone()), (4, "us", vec![1]));
        let none = choose(&rec, &answers, Some("ap"), |_| true, region, pick_best);
        assert_eq!(none.unwrap_err().to_string(), "no sealed replica of t/acme/3 in region ap answered");
        let empty = choose(&rec, &SealAnswers::new(), None, |_| true, region, pick_best);
        assert_eq!(empty, Err(NotYet::NoneAnswered { group: "t/acme/3".into() }));
    }

    /// Issue #14's bench: a region killed seconds after 200 tenants were created left tenants whose
    /// surviving learners had never received an entry; each answered the seal holding nothing,
    /// and the promotion waited for a replica with a log forever.
    #[test]
    fn survivors_that_hold_nothing_start_an_empty_epoch_once_every_member_is_heard() {
        let rec = acme();
        let learners: Vec<NodeId> = rec.learners.clone();
        let all_empty: SealAnswers = learners.iter().map(|l| (*l, None)).collect();
        let c = choose(&rec, &all_empty, None, |v| rec.voters.contains(&v), region, pick_best).unwrap();
        assert_eq!((c.best, c.mark, c.from_epoch, c.survivors.clone()), (learners[0], AckMark::default(), 3, vec![]));
        assert_eq!(c.sealed, learners);
        // A member that may still answer is waited for: it may hold the log.
        let heard_one = SealAnswers::from([(learners[0], None)]);
        let wait = choose(&rec, &heard_one, None, |v| rec.voters.contains(&v), region, pick_best);
        assert_eq!(wait, Err(NotYet::NoneAnswered { group: "t/acme/3".into() }));
        // A replica holding a log always wins over an empty one.
        let mut one_holds = all_empty.clone();
        one_holds.insert(learners[1], Some((3, m(2, 10, 4))));
        let c = choose(&rec, &one_holds, None, |v| rec.voters.contains(&v), region, pick_best).unwrap();
        assert_eq!((c.best, c.mark), (learners[1], m(2, 10, 4)));
        // A manual failover's target region still restricts the pick.
        let none = choose(&rec, &all_empty, Some("nowhere"), |v| rec.voters.contains(&v), region, pick_best);
        assert!(none.is_err());
    }

    fn mark() -> impl Strategy<Value = AckMark> {
        (0u64..4, 0u64..50, 0u64..100, 0u64..10_000).prop_map(|(term, index, writes, proposed_at_ms)| AckMark {
            term,
            index,
            writes,
            proposed_at_ms,
        })
    }

    proptest! {
        /// The chosen replica holds the newest epoch's log with the highest (term, index) among
        /// the allowed candidates, and sits in the manual failover's target region.
        #[test]
        fn choose_takes_the_highest_position_in_the_newest_epoch_and_the_target_region(
            answers in proptest::collection::btree_map(1u64..10, proptest::option::of((2u64..4, mark())), 0..9),
            to in proptest::option::of(proptest::sample::select(vec!["eu", "us", "ap"])),
        ) {
            let rec = acme();
            match choose(&rec, &answers, to, |_| true, region, pick_best) {
                Ok(c) if answers.values().all(Option::is_none) => {
                    // Nobody holds a log (every member here is expired or answered): an empty start.
                    prop_assert_eq!((answers[&c.best], c.mark, c.from_epoch), (None, AckMark::default(), rec.epoch));
                    prop_assert!(c.survivors.is_empty());
                    if let Some(r) = to {
                        prop_assert_eq!(region(c.best), Some(r));
                    }
                }
                Ok(c) => {
                    let newest = answers.values().flatten().map(|(e, _)| *e).max();
                    prop_assert_eq!(Some(c.from_epoch), newest);
                    prop_assert_eq!(answers[&c.best], Some((c.from_epoch, c.mark)));
                    if let Some(r) = to {
                        prop_assert_eq!(region(c.best), Some(r));
                    }
                    prop_assert_eq!(Some(c.region.as_str()), region(c.best));
                    for (n, a) in &answers {
                        if let Some((e, k)) = a {
                            if *e == c.from_epoch && to.is_none_or(|r| region(*n) == Some(r)) {
                                prop_assert!(k.position() <= c.mark.position(), "{} at {} is ahead of the chosen {}", n, k.position(), c.mark.position());
                            }
                        }
                    }
                    prop_assert!(!c.survivors.contains(&c.best));
                }
                Err(NotYet::Unfenced(_)) => prop_assert!(false, "every voter is expired here"),
                Err(_) => {
                    let newest = answers.values().flatten().map(|(e, _)| *e).max();
                    let any = answers.iter().any(|(n, a)| a.is_some_and(|(e, _)| Some(e) == newest) && to.is_none_or(|r| region(*n) == Some(r)));
                    prop_assert!(!any, "refused although a candidate answered");
                    let empty = newest.is_none() && answers.keys().any(|n| to.is_none_or(|r| region(*n) == Some(r)));
                    prop_assert!(!empty, "refused although every member is heard and an empty replica answered");
                }
            }
        }

        /// On one log (terms never decrease, each entry one write, proposal times never
        /// decrease): with the new epoch based at entry `b` and the old leader's newest reported
        /// ack at entry `r`, `lost_writes_min` is exactly the reported acks past the base (so never
        /// more than the acked writes lost), and the loss window contains the proposal time of
        /// every one of them when the old leases ended after they were proposed.
        #[test]
        fn loss_accounting_on_one_log(
            steps in proptest::collection::vec((any::<bool>(), 0u64..500), 1..40),
            b in any::<proptest::sample::Index>(),
            r in proptest::option::of(any::<proptest::sample::Index>()),
            lease_slack in 0u64..5000,
        ) {
            let (mut term, mut at) = (1u64, 0u64);
            let log: Vec<AckMark> = steps
                .iter()
                .enumerate()
                .map(|(i, (new_term, dt))| {
                    term += *new_term as u64;
                    at += dt;
                    AckMark { term, index: i as u64 + 1, writes: i as u64 + 1, proposed_at_ms: at }
                })
                .collect();
            let base = log[b.index(log.len())];
            let reported = r.map(|r| log[r.index(log.len())]);
            let lost: Vec<&AckMark> = log.iter().filter(|e| reported.is_some_and(|r| e.index <= r.index) && e.index > base.index).collect();
            let min = lost_writes_min(reported, &base);
            prop_assert_eq!(min, lost.len() as u64);
            let lease_end = log.last().expect("non-empty").proposed_at_ms + lease_slack;
            let (start, end) = loss_window(&base, lease_end);
            for e in lost {
                prop_assert!(start <= e.proposed_at_ms && e.proposed_at_ms <= end, "{:?} outside [{}, {}]", e, start, end);
            }
        }

        /// lost_writes_min never exceeds the writes reported past the base, is zero unless the
        /// report is past the base by (term, index), and the loss window contains the base's
        /// proposal time and the end of the old leases.
        #[test]
        fn loss_accounting_bounds(reported in proptest::option::of(mark()), base in mark(), lease_end in 0u64..20_000) {
            let min = lost_writes_min(reported, &base);
            match reported {
                Some(r) if r.position() > base.position() => prop_assert_eq!(min, r.writes.saturating_sub(base.writes)),
                _ => prop_assert_eq!(min, 0),
            }
            prop_assert!(min <= reported.map_or(0, |r| r.writes));
            let (start, end) = loss_window(&base, lease_end);
            prop_assert!(start <= end);
            prop_assert_eq!(start, base.proposed_at_ms);
            prop_assert!(end >= lease_end);
        }
    }
}
