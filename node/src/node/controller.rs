//! The meta leader's failover controller (DESIGN.md, "Fencing by node liveness" and
//! "Promotion"): it watches node liveness as the meta group sees it, and when a near-sync or
//! async tenant's voters have lost their quorum of live nodes it seals the old epoch and promotes
//! the most up-to-date surviving replica into a new epoch, recording the loss.
//!
//! Liveness here is judged on this node's monotonic clock, from the moment it *saw* a renewal
//! applied (never earlier than the renewal was sent), plus the period and the drift bound. A
//! newly elected meta leader has seen nothing yet, so it waits one full period plus the drift
//! bound before it may call anyone expired.

use std::collections::BTreeMap;
use std::time::Duration;

use super::ops::ApiError;
use super::Node;
use crate::meta::state::{
    AckMark, EpochBase, EventKind, MetaCommand, MetaReply, Mode, TenantEvent, TenantRecord, TenantState as TState,
};
use crate::raft::wire::{Reply, Request};
use crate::raft::Command;
use crate::seams::net::NodeId;

/// How often the controller looks.
pub const CONTROL_EVERY: Duration = Duration::from_millis(200);
/// How long a seal waits to hear from every live replica.
const SEAL_WAIT: Duration = Duration::from_secs(2);
const SEAL_CALL: Duration = Duration::from_millis(1500);

/// What the controller has seen while this node leads the meta group.
#[derive(Clone, Debug, Default)]
pub struct Observations {
    /// Monotonic time this node became meta leader (None: not leading).
    pub leading_since: Option<Duration>,
    /// Per node: the renewal count last seen, when it was first seen, and this node's own
    /// renewal count at that moment.
    pub seen: BTreeMap<NodeId, Seen>,
    /// This node's own renewal count in the directory at the last look.
    pub own: u64,
    /// This node's own renewal count when it began leading.
    pub own_at_start: u64,
    /// When the controller last looked.
    pub last_look: Option<Duration>,
}

/// One node's renewal as the controller saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub count: u64,
    pub at: Duration,
    /// The controller's own renewal count when it saw this one.
    pub own: u64,
}

/// A gap between two looks longer than this resets what the controller has seen.
const MAX_LOOK_GAP: Duration = Duration::from_secs(1);

/// How many of the controller's own renewals the meta group must have applied since a node's
/// last renewal was seen before that node may be called expired.
///
/// The grace (a period plus the drift bound) says that the node's lease has certainly run out,
/// which is what fencing needs. It does not say that the node is gone: while the meta group
/// cannot commit (it lost its quorum), no renewal applies, and every live node's lease runs out
/// alike. The controller's own renewal needs nothing but the meta group's quorum, so two of them
/// applied after a node's last one mean that the meta group was committing for two rounds in
/// which that node, were it alive and reachable, would have renewed too. (Seed 10179: the meta
/// group lost its quorum with eu-central and us-east-1; when us-east-1 came back, the
/// controller judged the live learners that held the newest writes expired, did not ask them to
/// seal, and promoted a replica that lacked 9 acked writes.) Counting renewals, not looks, holds
/// however rarely the controller looks. Waiting longer only delays a failover.
pub const OWN_RENEWALS_BEFORE_EXPIRY: u64 = 2;

impl Observations {
    /// Notes the renewal counts in the directory at `now`; `me` is this node.
    pub fn observe(&mut self, counts: impl IntoIterator<Item = (NodeId, u64)>, now: Duration, me: NodeId) {
        // A controller that did not look for a long while (its node was paused, or starved) has
        // seen nothing in that time: it starts over, as a new leader would.
        if self.last_look.is_some_and(|l| now.saturating_sub(l) > MAX_LOOK_GAP) {
            *self = Observations::default();
        }
        self.last_look = Some(now);
        let counts: Vec<(NodeId, u64)> = counts.into_iter().collect();
        let own = counts.iter().find(|(n, _)| *n == me).map_or(self.own, |(_, c)| *c);
        let starting = self.leading_since.is_none();
        let since = *self.leading_since.get_or_insert(now);
        if starting {
            self.own_at_start = own;
        }
        self.own = own;
        for (n, c) in counts {
            let e = self.seen.entry(n).or_insert(Seen { count: c, at: since, own: self.own_at_start });
            if e.count != c {
                *e = Seen { count: c, at: now, own };
            }
        }
    }

    /// Whether `node`'s lease has certainly expired by `now` (no renewal seen for `grace`) and
    /// the meta group has applied [`OWN_RENEWALS_BEFORE_EXPIRY`] of this node's own renewals
    /// since (so the silence is the node's, not the meta group's).
    pub fn expired(&self, node: NodeId, now: Duration, grace: Duration) -> bool {
        let Some(since) = self.leading_since else { return false };
        let last = self.seen.get(&node).copied().unwrap_or(Seen { count: 0, at: since, own: self.own_at_start });
        let meta_committed = self.own.saturating_sub(last.own) >= OWN_RENEWALS_BEFORE_EXPIRY
            || crate::planted::on(crate::planted::Bug::ExpireOnSilence);
        now.saturating_sub(last.at) > grace && meta_committed
    }
}

/// Picks the replica to promote: the most recent durable log by (term, index).
pub fn pick_best(answers: &[(NodeId, AckMark)]) -> Option<(NodeId, AckMark)> {
    if crate::planted::on(crate::planted::Bug::PromoteStaleRegion) {
        return answers.iter().min_by_key(|(n, m)| (m.position(), *n)).copied();
    }
    answers.iter().max_by_key(|(n, m)| (m.position(), m.writes, std::cmp::Reverse(*n))).copied()
}

/// Writes the old leader reported as acked that the new epoch lacks.
pub fn lost_writes_min(reported: Option<AckMark>, base: &AckMark) -> u64 {
    let reported = if crate::planted::on(crate::planted::Bug::UndercountLoss) { Some(*base) } else { reported };
    match reported {
        Some(a) if a.position() > base.position() => a.writes.saturating_sub(base.writes),
        _ => 0,
    }
}

impl Node {
    fn grace(&self) -> Duration {
        self.inner.cfg.liveness.period() + self.inner.cfg.liveness.max_clock_drift()
    }

    /// One look of the controller (called every [`CONTROL_EVERY`] by the node's loop).
    pub(super) async fn control_once(&self) {
        // Every node asks every 200 ms: read the leader in place (`GroupStatus::is_leader` is
        // the same test) rather than clone the group's metrics.
        if self.inner.meta.term_leader().1 != Some(self.inner.me) {
            *self.inner.controller.lock().expect("controller lock") = Default::default();
            return;
        }
        if self.inner.controller.lock().expect("controller lock").leading_since.is_none() {
            // Apply everything committed before judging anyone.
            if self.inner.meta.read_barrier().await.is_err() {
                return;
            }
        }
        let (counts, tenants) = {
            let meta = self.inner.meta.sm.read().await;
            let counts: Vec<(NodeId, u64)> = meta.state.nodes.values().map(|r| (r.id, r.heartbeats)).collect();
            (counts, meta.state.tenants.values().cloned().collect::<Vec<_>>())
        };
        let now = self.inner.clock.mono_now();
        self.inner.controller.lock().expect("controller lock").observe(counts, now, self.inner.me);
        for rec in tenants {
            if rec.sealed {
                let (to, kind) = match rec.failover_to.as_deref() {
                    Some(r) => (Some(r), EventKind::ManualFailover),
                    None => (None, EventKind::Failover),
                };
                if let Err(e) = self.promote(&rec, to, kind).await {
                    tracing::warn!(tenant = %rec.spec.name, error = %e, "promotion not done yet; will retry");
                }
                continue;
            }
            // sync fails over by openraft's own election among the survivors.
            if rec.spec.mode == Mode::Sync {
                continue;
            }
            let live = rec.voters.iter().filter(|v| !self.is_expired(**v)).count();
            if live * 2 > rec.voters.len() {
                self.move_to_placement(&rec).await;
                continue;
            }
            tracing::warn!(tenant = %rec.spec.name, epoch = rec.epoch, voters = ?rec.voters, "the tenant's voters lost their quorum of live nodes: sealing the epoch");
            let mut sealed = rec.clone();
            sealed.sealed = true;
            match self.update_tenant_here(&rec, sealed, None).await {
                Ok(r) => {
                    if let Err(e) = self.promote(&r, None, EventKind::Failover).await {
                        tracing::warn!(tenant = %rec.spec.name, error = %e, "promotion not done yet; will retry");
                    }
                }
                Err(e) => tracing::warn!(tenant = %rec.spec.name, error = %e, "cannot seal the epoch yet"),
            }
        }
    }

    /// A record update proposed on this node's own meta replica, never forwarded: the
    /// controller's judgment of liveness is only good while it leads the meta group, so a
    /// deposed leader's proposal must fail rather than reach the new leader.
    async fn update_tenant_here(
        &self,
        current: &TenantRecord,
        next: TenantRecord,
        event: Option<TenantEvent>,
    ) -> Result<TenantRecord, ApiError> {
        let cmd = MetaCommand::UpdateTenant { expect_version: current.version, record: next, event };
        match self.inner.meta.write(Command::Meta(cmd)).await {
            Ok((crate::raft::Reply::Meta(MetaReply::TenantUpdated(r)), _, _)) => Ok(r),
            Ok((crate::raft::Reply::Meta(MetaReply::Refused { reason }), _, _)) => Err(ApiError::Unavailable(reason)),
            Ok((other, _, _)) => Err(ApiError::Internal(format!("unexpected reply {other:?}"))),
            Err(e) => Err(e.into()),
        }
    }

    fn is_expired(&self, node: NodeId) -> bool {
        let now = self.inner.clock.mono_now();
        self.inner.controller.lock().expect("controller lock").expired(node, now, self.grace())
    }

    /// After a promotion the new epoch's voters are its survivors; once it acks, placement
    /// moves voters into the new primary region (in the background, by the group's leader). A
    /// region without a replica (it was down when the epoch began, and is back) gets its learner.
    /// Placement only adds here, so that it never churns.
    async fn move_to_placement(&self, rec: &TenantRecord) {
        let Ok(placed) = self.place_for(&rec.spec, Some(rec)).await else { return };
        let mut next = rec.clone();
        if rec.voters.len() < crate::tenant::placement::ASYNC_PRIMARY_VOTERS {
            // The founder stays a voter: it holds the seeded state and leads the group now.
            let mut voters = vec![rec.founder];
            voters.extend(placed.voters.iter().copied().filter(|v| *v != rec.founder));
            voters.truncate(crate::tenant::placement::ASYNC_PRIMARY_VOTERS);
            next.learners.retain(|l| !voters.contains(l));
            next.voters = voters;
        }
        let covered: Vec<String> = next.members().filter_map(|m| self.region_of(m).map(str::to_string)).collect();
        for l in placed.learners {
            if self.region_of(l).is_some_and(|r| !covered.iter().any(|c| c == r)) && !next.members().any(|m| m == l) {
                next.learners.push(l);
            }
        }
        if next.voters == rec.voters && next.learners == rec.learners {
            return;
        }
        if let Ok(r) = self.update_tenant_here(rec, next, None).await {
            tracing::info!(tenant = %r.spec.name, voters = ?r.voters, learners = ?r.learners, "placement: moving replicas");
        }
    }

    /// Seals every reachable replica of `rec`'s (sealed) epoch, picks the one with the most
    /// recent durable log (in `to_region` when given) and starts the next epoch from it.
    pub(crate) async fn promote(
        &self,
        rec: &TenantRecord,
        to_region: Option<&str>,
        kind: EventKind,
    ) -> Result<TenantEvent, ApiError> {
        let group = rec.group();
        let members: Vec<NodeId> = rec.members().collect();
        let started = self.inner.clock.mono_now();
        let mut answers: BTreeMap<NodeId, Option<(u64, AckMark)>> = BTreeMap::new();
        loop {
            // Members past their lease are fenced already; asking them would only cost the
            // call's whole timeout (a dead peer is noticed over UDP only when the call expires).
            let asks = members.iter().copied().filter(|m| !answers.contains_key(m) && !self.is_expired(*m)).map(|m| {
                let group = group.clone();
                async move {
                    let r = if m == self.inner.me {
                        self.serve_seal(&group).await
                    } else {
                        match self.call_peer_within(m, Request::Seal { group }, SEAL_CALL).await {
                            Ok(r) => r,
                            Err(_) => return None,
                        }
                    };
                    match r {
                        Reply::Sealed { mark, epoch } => Some((m, mark.map(|k| (epoch, k)))),
                        _ => None,
                    }
                }
            });
            answers.extend(futures::future::join_all(asks).await.into_iter().flatten());
            let waiting: Vec<NodeId> =
                members.iter().copied().filter(|m| !answers.contains_key(m) && !self.is_expired(*m)).collect();
            if waiting.is_empty() || self.inner.clock.mono_now().saturating_sub(started) > SEAL_WAIT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Fencing: no old voter may still ack. Each one is sealed (it answered) or its lease has
        // expired, judged as above (a period plus the drift bound with no renewal seen).
        let unfenced: Vec<NodeId> =
            rec.voters.iter().copied().filter(|v| !answers.contains_key(v) && !self.is_expired(*v)).collect();
        if !unfenced.is_empty() {
            return Err(ApiError::Unavailable(format!(
                "old-epoch voters {unfenced:?} are neither sealed nor past their liveness; waiting for their leases to expire"
            )));
        }
        // Logs of different epochs are different groups: only the newest epoch anyone holds counts.
        let newest = answers.values().flatten().map(|(e, _)| *e).max();
        let candidates: Vec<(NodeId, AckMark)> = answers
            .iter()
            .filter_map(|(n, m)| m.filter(|(e, _)| Some(*e) == newest).map(|(_, k)| (*n, k)))
            .filter(|(n, _)| to_region.is_none_or(|r| self.region_of(*n) == Some(r)))
            .collect();
        let from_epoch = newest.unwrap_or(rec.epoch);
        let Some((best, mark)) = pick_best(&candidates) else {
            return Err(ApiError::Unavailable(match to_region {
                Some(r) => format!("no sealed replica of {group} in region {r} answered"),
                None => format!("no sealed replica of {group} answered"),
            }));
        };
        let region = self.region_of(best).unwrap_or_default().to_string();
        let now_ms = self.inner.clock.wall_now_ms();
        let survivors: Vec<NodeId> =
            answers.iter().filter(|(n, m)| m.is_some() && **n != best).map(|(n, _)| *n).collect();
        let mut next = rec.clone();
        next.epoch = rec.epoch + 1;
        next.founder = best;
        next.voters = vec![best];
        next.learners = survivors.clone();
        next.spec.primary = region.clone();
        next.sealed = false;
        next.failover_to = None;
        next.state = TState::Healthy;
        next.acked = None;
        next.base = Some(EpochBase { from_epoch, node: best, last: mark });
        let (last_renewal, lease_end) = self.old_leases(&rec.voters).await;
        let mut ev = TenantEvent::new(
            kind,
            now_ms,
            rec.epoch,
            next.epoch,
            format!(
                "promoted node {best} in {region} from ({}, {}) with {} writes; sealed replicas: {:?}; first voters [{best}], learners {survivors:?}",
                mark.term,
                mark.index,
                mark.writes,
                answers.keys().collect::<Vec<_>>()
            ),
        );
        ev.failed_at_ms = Some(last_renewal.min(now_ms));
        ev.lost_writes_min = Some(lost_writes_min(rec.acked, &mark));
        ev.loss_window_start_ms = Some(mark.proposed_at_ms);
        ev.loss_window_end_ms = Some(lease_end.max(mark.proposed_at_ms));
        ev.old_voters = rec.voters.clone();
        let updated = self.update_tenant_here(rec, next, Some(ev.clone())).await?;
        tracing::warn!(tenant = %rec.spec.name, epoch = updated.epoch, node = best, %region, lost_min = ?ev.lost_writes_min, "promoted a new epoch");
        Ok(ev)
    }

    /// The old voters' newest liveness renewal and when the last of their leases ends, in wall
    /// time (their own clocks' stamps plus the period and the drift bound).
    async fn old_leases(&self, voters: &[NodeId]) -> (u64, u64) {
        let meta = self.inner.meta.sm.read().await;
        let last =
            voters.iter().filter_map(|v| meta.state.nodes.get(v)).map(|r| r.last_heartbeat_ms).max().unwrap_or(0);
        (last, last + self.grace().as_millis() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// The controller's own node in these tests.
    const ME: NodeId = 9;

    /// One look at `t`; `own` says whether the meta group applied one more of this node's own
    /// renewals since the last look (it renews about once a second: the tests bump it on every
    /// fifth look of 200 ms unless they stall the meta group).
    fn look(o: &mut Observations, others: &[(NodeId, u64)], t: Duration, own: bool) {
        let own_count = o.own + u64::from(own);
        o.observe(others.iter().copied().chain([(ME, own_count)]), t, ME);
    }

    /// Looks every 200 ms from `from` to `to` (inclusive), the meta group committing throughout.
    fn looks(o: &mut Observations, others: &[(NodeId, u64)], from: Duration, to: Duration) {
        let mut t = from;
        while t <= to {
            look(o, others, t, (t.as_millis() / 200).is_multiple_of(5));
            t += Duration::from_millis(200);
        }
    }

    #[test]
    fn a_new_leader_calls_nobody_expired_for_a_full_grace() {
        let mut o = Observations::default();
        looks(&mut o, &[(1, 5)], s(100), s(106));
        assert!(!o.expired(1, s(104), s(5)));
        assert!(!o.expired(2, s(105), s(5)), "an unseen node counts from the leader's start");
        assert!(o.expired(2, s(106), s(5)));
    }

    #[test]
    fn a_renewal_restarts_the_grace_from_when_it_was_seen() {
        let ms = Duration::from_millis;
        let mut o = Observations::default();
        // The controller looks every 200 ms; node 1 renews once, at 103 s.
        looks(&mut o, &[(1, 5)], ms(100_000), ms(102_800));
        looks(&mut o, &[(1, 6)], ms(103_000), ms(107_000));
        assert!(!o.expired(1, ms(107_000), s(5)));
        looks(&mut o, &[(1, 6)], ms(107_200), ms(108_200));
        assert!(o.expired(1, ms(108_200), s(5)), "an unchanged count does not renew");
    }

    #[test]
    fn a_controller_that_was_paused_forgets_what_it_saw() {
        let mut o = Observations::default();
        look(&mut o, &[(1, 5)], s(100), true);
        look(&mut o, &[(1, 5)], s(101), true);
        look(&mut o, &[(1, 5)], s(130), true);
        assert!(!o.expired(1, s(130), s(5)), "after a pause the grace starts over");
        looks(&mut o, &[(1, 5)], s(130), s(136));
        assert!(o.expired(1, s(136), s(5)));
    }

    #[test]
    fn nobody_expires_for_a_stalled_meta_group_and_a_node_renewing_after_it_is_not_expired() {
        let ms = Duration::from_millis;
        let mut o = Observations::default();
        // Until 110 s everyone renews about once a second.
        let mut t = ms(100_000);
        while t <= ms(110_000) {
            let c = (t.as_millis() / 1_000) as u64;
            look(&mut o, &[(1, c), (2, c)], t, (t.as_millis() / 200).is_multiple_of(5));
            t += ms(200);
        }
        let (c1, c2) = (110, 110);
        // From 110 s the meta group has no quorum: nothing is applied, not even this node's own
        // renewals, for 6 s.
        let mut t = ms(110_200);
        while t <= ms(116_000) {
            look(&mut o, &[(1, c1), (2, c2)], t, false);
            t += ms(200);
        }
        assert!(!o.expired(1, ms(116_000), s(5)), "a stalled meta group says nothing about node 1");
        // The quorum is back: this node's renewal applies at 116.2 s, node 1's at 116.6 s; node
        // 2 stays silent and is called expired once two own renewals applied after its last.
        look(&mut o, &[(1, c1), (2, c2)], ms(116_200), true);
        look(&mut o, &[(1, c1), (2, c2)], ms(116_400), false);
        assert!(!o.expired(2, ms(116_400), s(5)), "one own renewal since the stall is not enough");
        look(&mut o, &[(1, c1 + 1), (2, c2)], ms(116_600), false);
        looks(&mut o, &[(1, c1 + 1), (2, c2)], ms(116_800), ms(118_000));
        assert!(!o.expired(1, ms(118_000), s(5)));
        assert!(o.expired(2, ms(118_000), s(5)));
    }

    #[test]
    fn the_rule_counts_own_renewals_not_looks() {
        // The controller looks rarely (a promotion held it for 1.7 s at a time, seed 21), while
        // the meta group commits: a dead node is still called expired once its grace is over.
        let mut o = Observations::default();
        let mut t = Duration::from_millis(100_000);
        while t <= Duration::from_millis(110_000) {
            look(&mut o, &[(1, 5)], t, true);
            t += Duration::from_millis(900);
        }
        assert!(o.expired(1, Duration::from_millis(110_000), s(5)));
    }

    #[test]
    fn promotion_picks_the_highest_term_then_index() {
        let m = |term, index, writes| AckMark { term, index, writes, proposed_at_ms: 0 };
        let answers = [(1, m(3, 10, 5)), (2, m(4, 8, 4)), (3, m(3, 12, 6))];
        assert_eq!(pick_best(&answers).map(|b| b.0), Some(2), "(term, index), not the bare index");
    }

    #[test]
    fn loss_minimum_counts_reported_acks_past_the_base() {
        let m = |term, index, writes| AckMark { term, index, writes, proposed_at_ms: 0 };
        assert_eq!(lost_writes_min(Some(m(2, 30, 20)), &m(2, 25, 17)), 3);
        assert_eq!(lost_writes_min(Some(m(2, 20, 15)), &m(2, 25, 17)), 0);
        assert_eq!(lost_writes_min(None, &m(2, 25, 17)), 0);
    }
}
