//! The meta leader's failover controller (DESIGN.md, "Fencing by node liveness" and
//! "Promotion"): it watches node liveness as the meta group sees it, and when a near-sync or
//! async tenant's voters have lost their quorum of live nodes it seals the old epoch and promotes
//! the most up-to-date surviving replica into a new epoch, recording the loss.
//!
//! The decisions are pure and live in `tetrad-core`: what to do for each tenant at each look
//! (`control_plan.rs`), whether a node's lease has expired as this leader saw it
//! (`liveness_view.rs`), and whom to promote with what loss record (`promotion.rs`). This file
//! reads the directory and the clock, seals replicas over the network and commits the plans.

use std::time::Duration;

use tetrad_core::control_plan::{self, Step};
use tetrad_core::liveness_view::Observations;
use tetrad_core::promotion::{self, OldLeases, SealAnswers};

use std::sync::{Arc, Mutex};

use super::directory::Directory;
use super::reconcile::Reconcile;
use crate::api::error::ApiError;
use crate::config::NodeConfig;
use crate::meta::state::{AckMark, EventKind, MetaCommand, MetaReply, TenantEvent, TenantRecord};
use crate::raft::wire::{Reply, Request};
use crate::raft::Command;
use crate::seams::clock::ClockRef;
use crate::seams::net::NodeId;

/// How often the controller looks.
pub(super) const CONTROL_EVERY: Duration = Duration::from_millis(200);
/// How long a seal waits to hear from every live replica.
const SEAL_WAIT: Duration = Duration::from_secs(2);
const SEAL_CALL: Duration = Duration::from_millis(1500);
/// How many tenants' steps (seals, promotions, placement moves) one look carries out at once.
/// A region outage then costs about one seal wait per this many tenants, while the meta group's
/// proposals and the seal calls in flight stay bounded (each promotion asks every member of its
/// tenant, so at most this many times a tenant's replica count calls are out at once).
const CONTROL_CONCURRENCY: usize = 64;

/// Picks the replica to promote (`tetrad_core::promotion::pick_best`), with the planted bug's hook.
fn pick(answers: &[(NodeId, AckMark)]) -> Option<(NodeId, AckMark)> {
    // Planted `promote-stale-region`: the lowest log position instead of the highest.
    if crate::planted::on(crate::planted::Bug::PromoteStaleRegion) {
        return answers.iter().min_by_key(|(n, m)| (m.position(), *n)).copied();
    }
    promotion::pick_best(answers)
}

/// The failover controller.
pub(crate) struct Controller {
    me: NodeId,
    cfg: Arc<NodeConfig>,
    clock: ClockRef,
    directory: Arc<Directory>,
    /// Seals this node's own replica when it is one of those being sealed.
    reconcile: Arc<Reconcile>,
    /// The controller's view of every node's renewals, while this node leads the meta group.
    observations: Mutex<Observations>,
}

impl Controller {
    pub(super) fn new(
        me: NodeId,
        cfg: Arc<NodeConfig>,
        clock: ClockRef,
        directory: Arc<Directory>,
        reconcile: Arc<Reconcile>,
    ) -> Self {
        Self { me, cfg, clock, directory, reconcile, observations: Mutex::new(Default::default()) }
    }

    fn grace(&self) -> Duration {
        self.cfg.liveness.period() + self.cfg.liveness.max_clock_drift()
    }

    /// One look of the controller (called every [`CONTROL_EVERY`] by the node's loop).
    pub(crate) async fn control_once(&self) {
        // Every node asks every 200 ms: read the leader in place (`GroupStatus::is_leader` is
        // the same test) rather than clone the group's metrics.
        if self.directory.meta().term_leader().1 != Some(self.me) {
            *self.observations.lock().expect("controller lock") = Default::default();
            return;
        }
        if self.observations.lock().expect("controller lock").leading_since.is_none() {
            // Apply everything committed before judging anyone.
            if self.directory.meta().read_barrier().await.is_err() {
                return;
            }
        }
        let tenants = {
            let meta = self.directory.meta().sm.read().await;
            self.note_renewals(&meta.state);
            meta.state.tenants.values().cloned().collect::<Vec<_>>()
        };
        // Decide every tenant's step at one instant, then carry the steps out together: a region
        // outage that takes the leaders of hundreds of tenants must not fail them over one
        // tenant's seal timeouts after another's. Each step keeps its own fencing (a promotion
        // still needs every old voter sealed or expired, and commits here); `looking` keeps the
        // view of renewals fresh for as long as the batch runs.
        let steps: Vec<(TenantRecord, Step)> = tenants
            .into_iter()
            .map(|rec| {
                let step = control_plan::step(&rec, |v| self.is_expired(v));
                (rec, step)
            })
            .filter(|(_, step)| *step != Step::Nothing)
            .collect();
        use futures::stream::StreamExt;
        let work = futures::stream::iter(steps)
            .map(|(rec, step)| self.carry_out(rec, step))
            .buffer_unordered(CONTROL_CONCURRENCY)
            .collect::<Vec<()>>();
        self.looking(work).await;
    }

    /// Carries out one tenant's step of this look.
    async fn carry_out(&self, rec: TenantRecord, step: Step) {
        match step {
            Step::Promote { to_region, kind } => {
                if let Err(e) = self.promote(&rec, to_region.as_deref(), kind).await {
                    tracing::warn!(tenant = %rec.spec.name, error = %e, "promotion not done yet; will retry");
                }
            }
            Step::Nothing => {}
            Step::MoveToPlacement => self.move_to_placement(&rec).await,
            Step::SealAndPromote => {
                tracing::warn!(tenant = %rec.spec.name, epoch = rec.epoch, voters = ?rec.voters, "the tenant's voters lost their quorum of live nodes: sealing the epoch");
                match self.update_tenant_here(&rec, control_plan::sealed(&rec), None).await {
                    Ok(r) => {
                        if let Err(e) = self.promote(&r, None, EventKind::Failover).await {
                            tracing::warn!(tenant = %rec.spec.name, error = %e, "promotion not done yet; will retry");
                        }
                    }
                    Err(e) => tracing::warn!(tenant = %rec.spec.name, error = %e, "cannot seal the epoch yet"),
                }
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
        match self.directory.meta().write(Command::Meta(cmd)).await {
            Ok((crate::raft::Reply::Meta(MetaReply::TenantUpdated(r)), _, _)) => Ok(r),
            Ok((crate::raft::Reply::Meta(MetaReply::Refused { reason }), _, _)) => Err(ApiError::Unavailable(reason)),
            Ok((other, _, _)) => Err(ApiError::Internal(format!("unexpected reply {other:?}"))),
            Err(e) => Err(e.into()),
        }
    }

    /// Notes every node's renewal count as the applied meta state has it, now.
    fn note_renewals(&self, state: &crate::meta::state::MetaState) {
        let counts: Vec<(NodeId, u64)> = state.nodes.values().map(|r| (r.id, r.heartbeats)).collect();
        let now = self.clock.mono_now();
        self.observations.lock().expect("controller lock").observe(counts, now, self.me);
    }

    /// Runs `work` while still looking at the renewals every [`CONTROL_EVERY`], as the loop
    /// would: a seal that waits on frozen peers' timeouts must not leave a gap in the view. A
    /// gap longer than `MAX_LOOK_GAP` makes the view start over, and a view restarted on every
    /// attempt never sees the silent voters' leases expire, so the promotion would wait forever.
    async fn looking<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                () = tokio::time::sleep(CONTROL_EVERY) => {
                    if self.directory.meta().term_leader().1 == Some(self.me) {
                        let meta = self.directory.meta().sm.read().await;
                        self.note_renewals(&meta.state);
                    }
                }
            }
        }
    }

    fn is_expired(&self, node: NodeId) -> bool {
        let now = self.clock.mono_now();
        let view = self.observations.lock().expect("controller lock");
        // Planted `expire-on-silence`: the time since the last renewal alone decides (the seed
        // 10179 bug: a stalled meta group then makes live replicas look expired).
        if crate::planted::on(crate::planted::Bug::ExpireOnSilence) {
            return view.silence(node, now).is_some_and(|(quiet, _)| quiet > self.grace());
        }
        view.expired(node, now, self.grace())
    }

    /// Moves a tenant's replicas toward its placement (`tetrad_core::control_plan::placement_move`
    /// decides; the group's leader carries the membership change out in the background).
    async fn move_to_placement(&self, rec: &TenantRecord) {
        let Ok(placed) = self.directory.place_for(&rec.spec, Some(rec)).await else { return };
        let Some(next) = control_plan::placement_move(rec, &placed, |m| self.directory.region_of(m)) else { return };
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
        let started = self.clock.mono_now();
        let mut answers = SealAnswers::new();
        loop {
            // Members past their lease are fenced already; asking them would only cost the
            // call's whole timeout (a dead peer is noticed over UDP only when the call expires).
            let asks = members.iter().copied().filter(|m| !answers.contains_key(m) && !self.is_expired(*m)).map(|m| {
                let group = group.clone();
                async move {
                    let r = if m == self.me {
                        self.reconcile.serve_seal(&group).await
                    } else {
                        match self.directory.call_peer_within(m, Request::Seal { group }, SEAL_CALL).await {
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
            answers.extend(self.looking(futures::future::join_all(asks)).await.into_iter().flatten());
            let waiting: Vec<NodeId> =
                members.iter().copied().filter(|m| !answers.contains_key(m) && !self.is_expired(*m)).collect();
            if waiting.is_empty() || self.clock.mono_now().saturating_sub(started) > SEAL_WAIT {
                break;
            }
            self.looking(tokio::time::sleep(Duration::from_millis(100))).await;
        }
        // Fencing: no old voter may still ack. Each one is sealed (it answered) or its lease has
        // expired, judged as above (a period plus the drift bound with no renewal seen).
        let choice =
            promotion::choose(rec, &answers, to_region, |v| self.is_expired(v), |n| self.directory.region_of(n), pick)
                .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let now_ms = self.clock.wall_now_ms();
        let (last_renewal, lease_end) = self.old_leases(&rec.voters).await;
        let leases = OldLeases { last_renewal_ms: last_renewal, lease_end_ms: lease_end };
        // Planted `undercount-loss`: takes the promoted replica's position as the newest ack.
        let reported =
            if crate::planted::on(crate::planted::Bug::UndercountLoss) { Some(choice.mark) } else { rec.acked };
        let (next, ev) = promotion::next_epoch(rec, &choice, kind, now_ms, leases, reported);
        let updated = self.update_tenant_here(rec, next, Some(ev.clone())).await?;
        tracing::warn!(tenant = %rec.spec.name, epoch = updated.epoch, node = choice.best, region = %choice.region, lost_min = ?ev.lost_writes_min, "promoted a new epoch");
        Ok(ev)
    }

    /// The old voters' newest liveness renewal and when the last of their leases ends, in wall
    /// time (their own clocks' stamps plus the period and the drift bound).
    async fn old_leases(&self, voters: &[NodeId]) -> (u64, u64) {
        self.directory.meta().sm.read().await.state.old_leases(voters, self.grace())
    }
}
