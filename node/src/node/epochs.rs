//! A tenant's epochs as one node sees them: the near-sync lag gate and ack reports of a leader,
//! sealing, seeding a promoted epoch, the leader's membership reconciliation (placement moves,
//! the sync leader's return to its primary region) and the divergent tails of returning
//! old-epoch replicas. The gate's decisions are pure and live in `tetrad-core`
//! (`node/core/src/lag_gate.rs`); this file reads the group's progress and the clock, and waits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tetrad_core::lag_gate::{self, GateVerdict};
pub use tetrad_core::lag_gate::{AckBook, Exposure};
use tetrad_core::membership_plan::{self, GroupView, MembershipStep};

use super::ops::ApiError;
use super::Node;
use crate::meta::state::{
    parse_group, tenant_group, AckMark, EventKind, MetaCommand, Mode, TenantEvent, TenantRecord, TenantState as TState,
};
use crate::raft::group::{Group, GroupError, GroupStatus, WriteError};
use crate::raft::wire::{Reply, Request};
use crate::seams::net::NodeId;
use crate::tenant::epoch;
use crate::tenant::group_state::TenantState;

/// A membership change that openraft refused or could not make; the next reconcile tick retries.
#[derive(Debug, thiserror::Error)]
enum MembershipError {
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Group(#[from] GroupError),
}

/// How long a write may wait at the lag gate before the client is told the outcome is unknown
/// (it is committed in the primary region; a retry is idempotent).
const GATE_PATIENCE: Duration = Duration::from_secs(30);
const GATE_POLL: Duration = Duration::from_millis(10);

impl Node {
    /// The highest log index that the gate counts as durable outside `region`: on two members
    /// there (leader only; the rule is `tetrad_core::lag_gate::replicated_outside`).
    fn replicated_outside(&self, st: &GroupStatus, region: &str) -> u64 {
        // Planted `lag-gate-one-copy`: one copy outside the region counts (the rule before #18).
        let copies =
            if crate::planted::on(crate::planted::Bug::LagGateOneCopy) { 1 } else { lag_gate::GATE_COPIES_OUTSIDE };
        lag_gate::replicated_outside(&st.matched, region, |m| self.region_of(m), copies)
    }

    /// The gate's current exposure for a group this node leads.
    fn exposure_of(&self, g: &Group<TenantState>) -> (Exposure, GroupStatus) {
        let st = g.status();
        let region = self.region_of(self.inner.me).unwrap_or_default().to_string();
        let replicated = self.replicated_outside(&st, &region);
        // Planted `lag-gate-off-by-one`: counts the entry after the replicated one as durable.
        let replicated =
            if crate::planted::on(crate::planted::Bug::LagGateOffByOne) { replicated + 1 } else { replicated };
        let now = self.inner.clock.mono_now();
        let mut books = self.inner.acks.lock().expect("acks lock");
        let book = books.entry(g.name.clone()).or_insert_with(|| AckBook::begin(st.term, st.last_index));
        book.follow_term(st.term, st.last_index);
        (book.exposure(replicated, now), st)
    }

    /// The near-sync lag gate, between the commit and the ack: waits while an acked write has
    /// been exposed (durable only in the primary region) longer than the tenant's RPO target,
    /// or switches the tenant to degraded first (committed in the meta group) when it says
    /// `on_lag = degrade`.
    pub(super) async fn lag_gate(&self, g: &Group<TenantState>, tenant: &str) -> Result<(), ApiError> {
        let started = self.inner.clock.mono_now();
        loop {
            let Some(rec) = self.inner.meta.sm.read().await.state.tenants.get(tenant).cloned() else {
                return Err(ApiError::UnknownTenant(tenant.to_string()));
            };
            if !lag_gate::gate_applies(&rec) {
                return Ok(());
            }
            let rpo = Duration::from_millis(rec.spec.rpo_target_ms);
            let (exposure, st) = self.exposure_of(g);
            if !st.is_leader {
                return Err(ApiError::OutcomeUnknown(
                    "the write committed, but this node lost the lead at the lag gate".into(),
                ));
            }
            let verdict = lag_gate::verdict(exposure, rpo, rec.spec.on_lag);
            if verdict == GateVerdict::Open {
                return Ok(());
            }
            if verdict == GateVerdict::Degrade {
                let ev = TenantEvent::new(
                    EventKind::Degraded,
                    self.inner.clock.wall_now_ms(),
                    rec.epoch,
                    rec.epoch,
                    format!("an acked write was not durable outside the primary region within {} ms", rpo.as_millis()),
                );
                let mut next = rec.clone();
                next.state = TState::Degraded;
                match self.update_tenant(&rec, next, Some(ev)).await {
                    Ok(_) => {
                        tracing::warn!(%tenant, "tenant degraded: acking as async until replication catches up");
                        return Ok(());
                    }
                    Err(e) => tracing::debug!(%tenant, error = %e, "degrade did not commit yet"),
                }
            }
            if self.inner.clock.mono_now().saturating_sub(started) > GATE_PATIENCE {
                return Err(ApiError::OutcomeUnknown(format!(
                    "the write committed in the primary region but no other region has made the writes before it durable within {} ms (the lag gate holds the ack)",
                    rpo.as_millis()
                )));
            }
            tokio::time::sleep(GATE_POLL).await;
        }
    }

    /// Records an ack in the leader's book (for the gate and the meta group's loss accounting);
    /// the first ack of a promoted epoch is reported at once (it ends the failover's RTO).
    pub(super) fn note_ack(&self, g: &Group<TenantState>, rec: &TenantRecord, mark: AckMark) {
        let now = self.inner.clock.mono_now();
        let first = {
            let mut books = self.inner.acks.lock().expect("acks lock");
            let book = books.entry(g.name.clone()).or_insert_with(|| AckBook::begin(mark.term, mark.index - 1));
            book.follow_term(mark.term, mark.index - 1);
            book.acked(mark.index, now, mark);
            let first = !book.first_ack_reported && rec.base.is_some();
            book.first_ack_reported = true;
            first
        };
        if first {
            let node = self.clone();
            let cmd = MetaCommand::FirstAck {
                tenant: rec.spec.name.clone(),
                epoch: rec.epoch,
                at_ms: self.inner.clock.wall_now_ms(),
            };
            tokio::spawn(async move {
                let _ = node.propose_meta(cmd).await;
            });
        }
    }

    /// Reports each led group's newest ack to the meta group (sent alongside each liveness renewal).
    pub(super) async fn report_acks(&self) {
        let due: Vec<(String, AckMark)> = {
            let books = self.inner.acks.lock().expect("acks lock");
            books
                .iter()
                .filter(|(_, b)| b.newest != b.reported)
                .filter_map(|(g, b)| Some((g.clone(), b.newest?)))
                .collect()
        };
        for (group, mark) in due {
            let Some((tenant, epoch)) = parse_group(&group) else { continue };
            let cmd = MetaCommand::ReportAcked { tenant, epoch, mark };
            if self.propose_meta(cmd).await.is_ok() {
                if let Some(b) = self.inner.acks.lock().expect("acks lock").get_mut(&group) {
                    b.reported = Some(mark);
                }
            }
        }
    }

    /// Waits (at most `bound`) until this node's meta replica has applied `index`.
    pub(super) async fn wait_meta_applied(&self, index: u64, bound: Duration) -> bool {
        let start = self.inner.clock.mono_now();
        loop {
            // The state machine's own applied position (it runs ahead of openraft's metrics by
            // at most one publication), read without cloning the group's metrics every 5 ms.
            if self.inner.meta.sm.read().await.applied.is_some_and(|a| a.index >= index) {
                return true;
            }
            if self.inner.clock.mono_now().saturating_sub(start) > bound {
                tracing::debug!(index, "the directory did not catch up with the renewal in time; lease not extended");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Whether the local directory still shows `epoch` of `tenant` as current and unsealed:
    /// checked right before an ack, after the lease (whose renewal waited for the directory).
    pub(super) async fn epoch_current(&self, tenant: &str, epoch: u64) -> bool {
        let meta = self.inner.meta.sm.read().await;
        meta.state.tenants.get(tenant).is_some_and(|r| r.epoch == epoch && !r.sealed)
    }

    /// Stops a tenant group on this node for good (its epoch is sealed or superseded).
    pub(super) async fn seal_local(&self, group: &str) {
        self.inner.sealed.lock().expect("sealed lock").insert(group.to_string());
        let g = self.inner.tenants.lock().expect("tenants lock").remove(group);
        self.inner.acks.lock().expect("acks lock").remove(group);
        if let Some(g) = g {
            g.shutdown().await;
            tracing::warn!(node = %self.name(), %group, "tenant group sealed on this node: it appends and acks nothing more");
        }
    }

    /// Answers the meta leader's seal: stops the replica and says where its durable log ends.
    /// A node that never started that epoch (it was promoted but died before seeding, say)
    /// answers for the newest earlier epoch it holds, so that a promotion can start from there.
    pub(super) async fn serve_seal(&self, group: &str) -> Reply {
        self.seal_local(group).await;
        let Some((tenant, e)) = parse_group(group) else {
            return Reply::Sealed { mark: None, epoch: 0 };
        };
        let held = epoch::local_epochs(&self.inner.store, &tenant).unwrap_or_default();
        let Some(from) = held.range(..=e).next_back().copied() else {
            return Reply::Sealed { mark: None, epoch: e };
        };
        let from_group = tenant_group(&tenant, from);
        if from != e {
            self.seal_local(&from_group).await;
        }
        // Log appends the stopped group queued may still be committing: report the log as it
        // ends once they are durable.
        if let Err(err) = self.inner.store.flush().await {
            return Reply::Error(crate::raft::wire::WireError::Failed(err.to_string()));
        }
        match epoch::inspect(&self.inner.store, &from_group) {
            Ok(r) => Reply::Sealed { mark: Some(r.mark()), epoch: from },
            Err(err) => {
                tracing::error!(group = %from_group, error = %err, "cannot read the sealed replica's log");
                Reply::Error(crate::raft::wire::WireError::Failed(err.to_string()))
            }
        }
    }

    /// The catalog of a group this node leads (after a read barrier).
    pub(super) async fn serve_catalog_names(&self, group: &str) -> Reply {
        let Some(g) = self.tenant_group(group) else {
            return Reply::Error(crate::raft::wire::WireError::UnknownGroup(group.to_string()));
        };
        if let Err(e) = g.read_barrier().await {
            return match e {
                crate::raft::group::WriteError::NotLeader(l) => {
                    Reply::Error(crate::raft::wire::WireError::NotLeader(l))
                }
                other => Reply::Error(crate::raft::wire::WireError::Failed(other.to_string())),
            };
        }
        let sm = g.sm.read().await;
        Reply::Names(sm.state.catalog.segments.values().map(|r| (r.name.clone(), r.blake3)).collect())
    }

    /// Brings this node's tenant groups in line with one directory record: seals, seeds,
    /// starts, initialises (founder only), reconciles membership when leading, and reports the
    /// divergent tail of older epochs it holds.
    pub(super) async fn reconcile_tenant(&self, rec: &TenantRecord, slow_tick: bool) {
        let me = self.inner.me;
        let group = rec.group();
        // Any older epoch still running here is superseded: stop it.
        let running: Vec<String> = self
            .inner
            .tenants
            .lock()
            .expect("tenants lock")
            .keys()
            .filter(|g| parse_group(g).is_some_and(|(t, e)| t == rec.spec.name && e < rec.epoch))
            .cloned()
            .collect();
        for old in running {
            self.seal_local(&old).await;
        }
        if rec.sealed {
            self.seal_local(&group).await;
            return;
        }
        if slow_tick && rec.epoch > 1 {
            self.report_tails(rec).await;
        }
        if !rec.members().any(|m| m == me) || self.inner.sealed.lock().expect("sealed lock").contains(&group) {
            return;
        }
        let g = match self.tenant_group(&group) {
            Some(g) => g,
            None => {
                if let Some(base) = rec.base.as_ref().filter(|b| b.node == me) {
                    let old = tenant_group(&rec.spec.name, base.from_epoch);
                    if let Err(e) = epoch::seed(&self.inner.store, &old, &group).await {
                        tracing::error!(%group, error = %e, "cannot seed the promoted epoch; will retry");
                        return;
                    }
                }
                match Group::<TenantState>::start(
                    &group,
                    self.inner.store.clone(),
                    self.inner.transport.clone(),
                    &self.inner.cfg.raft,
                    me,
                    self.inner.peers.clone(),
                )
                .await
                {
                    Ok(g) => {
                        let g = Arc::new(g);
                        self.attach_chunk_repair(&g).await;
                        self.inner.tenants.lock().expect("tenants lock").insert(group.clone(), g.clone());
                        tracing::info!(node = %self.name(), %group, "tenant group started");
                        g
                    }
                    Err(e) => {
                        tracing::error!(node = %self.name(), %group, error = %e, "cannot start tenant group");
                        return;
                    }
                }
            }
        };
        if rec.founder == me {
            let first = if rec.base.is_some() { vec![me] } else { rec.voters.clone() };
            match g.initialize(&first).await {
                Ok(true) => tracing::info!(%group, voters = ?first, "tenant group initialised"),
                Ok(false) => {}
                Err(e) => tracing::warn!(%group, error = %e, "tenant group initialisation failed; will retry"),
            }
        }
        let st = g.status();
        if rec.spec.mode == Mode::Sync && self.should_hand_over(&group, &st) {
            // A leader whose node has had no valid lease for a whole period cannot ack; if its
            // followers still hear its heartbeats (traffic into its region is cut, not out of
            // it) they never elect another. Hand the lead to the most caught-up voter elsewhere.
            self.step_down(&g, &st).await;
            return;
        }
        if st.is_leader {
            if let Err(e) = self.reconcile_membership(&g, rec, &st).await {
                tracing::debug!(%group, error = %e, "membership reconciliation will retry");
            }
            self.update_tenant_state(&g, rec).await;
        }
    }

    /// How long this node has led `group` in its current term, as seen by the loops that call
    /// this (every reconcile tick); zero when it does not lead.
    pub(super) fn led_for(&self, group: &str, st: &GroupStatus) -> Duration {
        let now = self.inner.clock.mono_now();
        let mut leading = self.inner.leading_since.lock().expect("leading lock");
        if !st.is_leader {
            leading.remove(group);
            return Duration::ZERO;
        }
        let since = leading.entry(group.to_string()).or_insert((st.term, now));
        if since.0 != st.term {
            *since = (st.term, now);
        }
        now.saturating_sub(since.1)
    }

    /// Whether a leader of `group` should hand the lead over because it cannot ack: its lease
    /// has been invalid for a whole period *while it led* for a whole period. The second half
    /// matters after the meta group was unavailable for longer than a period: every node's lease
    /// has lapsed then, and a new leader that stepped down before its first renewal could commit
    /// would hand the lead round forever (sim seed 48).
    pub(super) fn should_hand_over(&self, group: &str, st: &GroupStatus) -> bool {
        let led = self.led_for(group, st);
        st.is_leader && self.fenced_for_long() && led >= self.inner.cfg.liveness.period()
    }

    /// Whether this node's lease has been invalid for at least one liveness period (and the node
    /// has run long enough to have had one).
    pub(super) fn fenced_for_long(&self) -> bool {
        let period = self.inner.cfg.liveness.period();
        !self.inner.liveness.is_valid()
            && self.inner.liveness.invalid_for() >= period
            && self.inner.clock.mono_now().saturating_sub(self.inner.started) >= period * 2
    }

    /// Transfers the lead of `g` to the voter outside this node's region (or any voter) whose
    /// log is the furthest along.
    pub(super) async fn step_down<S: crate::raft::state_machine::GroupState>(&self, g: &Group<S>, st: &GroupStatus) {
        let best = membership_plan::handover_target(self.inner.me, &st.voters, &st.matched, |n| self.region_of(n));
        if let Some(to) = best {
            tracing::warn!(group = %g.name, to, "no valid liveness lease for a whole period: handing the lead over");
            let _ = g.transfer_leader(to).await;
        }
    }

    /// On the leader: moves the group's membership toward the record's placement (learners
    /// first, voters once caught up), and hands a sync tenant's lead back to its primary region
    /// (`tetrad_core::membership_plan` decides the step).
    async fn reconcile_membership(
        &self,
        g: &Group<TenantState>,
        rec: &TenantRecord,
        st: &GroupStatus,
    ) -> Result<(), MembershipError> {
        let view = GroupView {
            voters: &st.voters,
            learners: &st.learners,
            matched: &st.matched,
            last_index: st.last_index,
            applied_index: st.applied_index,
            purged_index: st.purged_index,
        };
        match membership_plan::membership_step(rec, &view, self.inner.me, |n| self.region_of(n)) {
            MembershipStep::AddLearners { purge_upto, add } => {
                if let Some(upto) = purge_upto {
                    g.snapshot_and_purge(upto).await?;
                }
                for m in add {
                    g.add_learner(m).await?;
                    tracing::info!(group = %g.name, node = m, "learner added");
                }
            }
            MembershipStep::ChangeVoters(voters) => {
                g.change_voters(&voters).await?;
                tracing::info!(group = %g.name, voters = ?voters, "voters changed to the placement");
            }
            MembershipStep::RemoveLearners(extra) => g.remove_learners(&extra).await?,
            MembershipStep::TransferLead(t) => {
                tracing::info!(group = %g.name, to = t, "handing the lead to the primary region");
                g.transfer_leader(t).await?;
            }
            MembershipStep::WaitForCatchUp | MembershipStep::Nothing => {}
        }
        Ok(())
    }

    /// On a near-sync leader: degraded -> catching-up once the exposure is back within the
    /// target, -> healthy once every acked write is durable in another region.
    async fn update_tenant_state(&self, g: &Group<TenantState>, rec: &TenantRecord) {
        if rec.state == TState::Healthy {
            return;
        }
        let (exposure, _) = self.exposure_of(g);
        let rpo = Duration::from_millis(rec.spec.rpo_target_ms);
        let Some((next_state, kind)) = lag_gate::recovery_step(rec.state, exposure, rpo) else { return };
        let mut next = rec.clone();
        next.state = next_state;
        let ev = kind.map(|k| {
            TenantEvent::new(
                k,
                self.inner.clock.wall_now_ms(),
                rec.epoch,
                rec.epoch,
                "every acked write is durable in another region again".into(),
            )
        });
        if self.update_tenant(rec, next, ev).await.is_ok() {
            tracing::info!(tenant = %rec.spec.name, state = next_state.as_str(), "tenant state changed");
        }
    }

    /// Lists, once per old epoch, the writes this node holds durably from it that the current
    /// epoch lacks. They stay in the old group's rows and log.
    async fn report_tails(&self, rec: &TenantRecord) {
        let store = &self.inner.store;
        let Ok(epochs) = epoch::local_epochs(store, &rec.spec.name) else { return };
        // Failovers from an epoch this node was a voter of but never started (it was promoted
        // and stopped before seeding, say): its seal answered for the newest earlier epoch it
        // holds, so that epoch's log is its durable state of the missing one, and its tail is
        // owed from there (sim seed 4251: without it, that failover's lost_writes_max was never
        // filled in). Owed until the meta group holds this node's tail, so no local marker.
        let owed: Vec<(u64, u64)> = {
            let meta = self.inner.meta.sm.read().await;
            meta.state
                .history
                .get(&rec.spec.name)
                .into_iter()
                .flatten()
                .filter(|ev| ev.from_epoch < rec.epoch && ev.to_epoch > ev.from_epoch)
                .filter(|ev| ev.old_voters.contains(&self.inner.me) && !ev.tails.contains_key(&self.inner.me))
                .filter(|ev| !epochs.contains(&ev.from_epoch))
                .filter_map(|ev| epochs.range(..ev.from_epoch).next_back().map(|held| (ev.from_epoch, *held)))
                .collect()
        };
        let own = epochs.iter().filter(|e| **e < rec.epoch).map(|e| (*e, *e));
        for (e, from) in own.chain(owed) {
            let old = tenant_group(&rec.spec.name, from);
            if e == from && epoch::tail_reported(store, &old).unwrap_or(true) {
                continue;
            }
            if self.tenant_group(&old).is_some() {
                continue;
            }
            if store.flush().await.is_err() {
                return;
            }
            let Ok(replica) = epoch::inspect(store, &old) else { continue };
            let Some(names) = self.current_catalog(rec).await else { return };
            let tail = epoch::divergent_tail(&replica, &names);
            let cmd = MetaCommand::ReportTail {
                tenant: rec.spec.name.clone(),
                epoch: e,
                node: self.inner.me,
                tail: tail.clone(),
            };
            if self.propose_meta(cmd).await.is_ok() {
                if !tail.is_empty() {
                    tracing::warn!(group = %old, epoch = e, writes = tail.len(), "divergent tail kept aside and listed");
                }
                if e == from {
                    let _ = epoch::note_tail_reported(store, &old, &tail).await;
                }
            }
        }
    }

    /// The current epoch's catalog, from its leader.
    async fn current_catalog(&self, rec: &TenantRecord) -> Option<BTreeMap<String, crate::storage::chunks::Hash>> {
        let group = rec.group();
        let mut order: Vec<NodeId> = rec.voters.clone();
        order.sort_by_key(|v| *v != rec.founder);
        for to in order {
            let r = if to == self.inner.me {
                self.serve_catalog_names(&group).await
            } else {
                match self.call_peer(to, Request::CatalogNames { group: group.clone() }).await {
                    Ok(r) => r,
                    Err(_) => continue,
                }
            };
            if let Reply::Names(n) = r {
                return Some(n.into_iter().collect());
            }
        }
        None
    }
}
