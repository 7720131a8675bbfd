//! Reconciliation: brings the tenant groups running on this node in line with the meta
//! directory. It starts, seeds (a promoted epoch) and initialises groups, seals superseded or
//! sealed epochs for good, moves a led group's membership toward the record's placement (the
//! step is `tetrad_core::membership_plan`'s), hands a fenced lead over, walks a near-sync
//! tenant's state back from degraded, and reports the divergent tails of old epochs this node
//! holds. (Not to be confused with `tenant/epoch.rs`: a stopped group's rows on disk.)
//!
//! Owns: the set of groups sealed here, and when this node was first seen leading each group
//! in its current term. It is the only writer of the hosted groups registry.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use tetrad_core::lag_gate;
use tetrad_core::membership_plan::{self, GroupView, MembershipStep};

use super::directory::Directory;
use super::hosted::HostedGroups;
use super::repair::Repair;
use super::writes::Writes;
use crate::config::NodeConfig;
use crate::meta::liveness::Liveness;
use crate::meta::state::{
    parse_group, tenant_group, MetaCommand, Mode, TenantEvent, TenantRecord, TenantState as TState,
};
use crate::raft::group::{Group, GroupError, GroupStatus, WriteError};
use crate::raft::peers::PeerBook;
use crate::raft::wire::{Reply, Request};
use crate::seams::clock::ClockRef;
use crate::seams::net::{NodeId, TransportRef};
use crate::storage::store::Store;
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

/// What reconciliation needs and what it owns.
pub(crate) struct Reconcile {
    me: NodeId,
    cfg: Arc<NodeConfig>,
    clock: ClockRef,
    store: Arc<Store>,
    transport: TransportRef,
    peers: PeerBook,
    liveness: Liveness,
    /// Monotonic time the node started.
    started: Duration,
    directory: Arc<Directory>,
    writes: Arc<Writes>,
    repair: Arc<Repair>,
    hosted: Arc<HostedGroups>,
    /// Tenant groups this node stopped because their epoch was sealed or superseded; never
    /// restarted (their rows and log stay, as the divergent tail's record).
    sealed: Mutex<BTreeSet<String>>,
    /// Per group this node leads: the term and the monotonic time it was first seen leading in
    /// it (see [`Reconcile::led_for`]).
    leading_since: Mutex<HashMap<String, (u64, Duration)>>,
}

/// The collaborators [`Reconcile`] is built with.
pub(super) struct ReconcileDeps {
    pub me: NodeId,
    pub cfg: Arc<NodeConfig>,
    pub clock: ClockRef,
    pub store: Arc<Store>,
    pub transport: TransportRef,
    pub peers: PeerBook,
    pub liveness: Liveness,
    pub started: Duration,
    pub directory: Arc<Directory>,
    pub writes: Arc<Writes>,
    pub repair: Arc<Repair>,
    pub hosted: Arc<HostedGroups>,
}

impl Reconcile {
    pub(super) fn new(d: ReconcileDeps) -> Self {
        Self {
            me: d.me,
            cfg: d.cfg,
            clock: d.clock,
            store: d.store,
            transport: d.transport,
            peers: d.peers,
            liveness: d.liveness,
            started: d.started,
            directory: d.directory,
            writes: d.writes,
            repair: d.repair,
            hosted: d.hosted,
            sealed: Mutex::new(BTreeSet::new()),
            leading_since: Mutex::new(HashMap::new()),
        }
    }

    fn name(&self) -> &str {
        &self.cfg.name
    }

    /// One reconcile tick over every tenant record of the local directory.
    pub(crate) async fn reconcile_tenants(&self, slow_tick: bool) {
        let records: Vec<_> = self.directory.meta().sm.read().await.state.tenants.values().cloned().collect();
        for rec in records {
            self.reconcile_tenant(&rec, slow_tick).await;
        }
    }

    /// Stops a tenant group on this node for good (its epoch is sealed or superseded).
    async fn seal_local(&self, group: &str) {
        self.sealed.lock().expect("sealed lock").insert(group.to_string());
        let g = self.hosted.remove(group);
        self.writes.forget(group);
        if let Some(g) = g {
            g.shutdown().await;
            tracing::warn!(node = %self.name(), %group, "tenant group sealed on this node: it appends and acks nothing more");
        }
    }

    /// Answers the meta leader's seal: stops the replica and says where its durable log ends.
    /// A node that never started that epoch (it was promoted but died before seeding, say)
    /// answers for the newest earlier epoch it holds, so that a promotion can start from there.
    pub(crate) async fn serve_seal(&self, group: &str) -> Reply {
        self.seal_local(group).await;
        let Some((tenant, e)) = parse_group(group) else {
            return Reply::Sealed { mark: None, epoch: 0 };
        };
        let held = epoch::local_epochs(&self.store, &tenant).unwrap_or_default();
        let Some(from) = held.range(..=e).next_back().copied() else {
            return Reply::Sealed { mark: None, epoch: e };
        };
        let from_group = tenant_group(&tenant, from);
        if from != e {
            self.seal_local(&from_group).await;
        }
        // Log appends the stopped group queued may still be committing: report the log as it
        // ends once they are durable.
        if let Err(err) = self.store.flush().await {
            return Reply::Error(crate::raft::wire::WireError::Failed(err.to_string()));
        }
        match epoch::inspect(&self.store, &from_group) {
            Ok(r) => Reply::Sealed { mark: Some(r.mark()), epoch: from },
            Err(err) => {
                tracing::error!(group = %from_group, error = %err, "cannot read the sealed replica's log");
                Reply::Error(crate::raft::wire::WireError::Failed(err.to_string()))
            }
        }
    }

    /// The catalog of a group this node leads (after a read barrier).
    pub(crate) async fn serve_catalog_names(&self, group: &str) -> Reply {
        let Some(g) = self.hosted.get(group) else {
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
        let segments = sm.state.catalog.segments.values().map(|r| (r.name.clone(), r.blake3));
        Reply::Names(segments.chain(epoch::record_names(&sm.state.records)).collect())
    }

    /// Brings this node's tenant groups in line with one directory record: seals, seeds,
    /// starts, initialises (founder only), reconciles membership when leading, and reports the
    /// divergent tail of older epochs it holds.
    async fn reconcile_tenant(&self, rec: &TenantRecord, slow_tick: bool) {
        let me = self.me;
        let group = rec.group();
        // Any older epoch still running here is superseded: stop it.
        let running: Vec<String> = self
            .hosted
            .names()
            .into_iter()
            .filter(|g| parse_group(g).is_some_and(|(t, e)| t == rec.spec.name && e < rec.epoch))
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
        if !rec.members().any(|m| m == me) || self.sealed.lock().expect("sealed lock").contains(&group) {
            return;
        }
        let g = match self.hosted.get(&group) {
            Some(g) => g,
            None => {
                if let Some(base) = rec.base.as_ref().filter(|b| b.node == me) {
                    let old = tenant_group(&rec.spec.name, base.from_epoch);
                    if let Err(e) = epoch::seed(&self.store, &old, &group).await {
                        tracing::error!(%group, error = %e, "cannot seed the promoted epoch; will retry");
                        return;
                    }
                }
                // The repair source goes in before the group starts: opening the group reads
                // its log, whose sideloaded records are inflated from chunk files, and a chunk
                // that rotted while the node was down must be repairable then (sim seed 187,
                // disk-faults, near-sync).
                *self.store.chunk_source_slot(&group).write().unwrap_or_else(|p| p.into_inner()) =
                    Some(Repair::source_for(&self.repair, &group));
                match Group::<TenantState>::start(
                    &group,
                    self.store.clone(),
                    self.transport.clone(),
                    &self.cfg.raft,
                    me,
                    self.peers.clone(),
                )
                .await
                {
                    Ok(g) => {
                        let g = Arc::new(g);
                        Repair::attach(&self.repair, &g).await;
                        self.hosted.insert(group.clone(), g.clone());
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
    fn led_for(&self, group: &str, st: &GroupStatus) -> Duration {
        let now = self.clock.mono_now();
        let mut leading = self.leading_since.lock().expect("leading lock");
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
    pub(crate) fn should_hand_over(&self, group: &str, st: &GroupStatus) -> bool {
        let led = self.led_for(group, st);
        st.is_leader && self.fenced_for_long() && led >= self.cfg.liveness.period()
    }

    /// Whether this node's lease has been invalid for at least one liveness period (and the node
    /// has run long enough to have had one).
    fn fenced_for_long(&self) -> bool {
        let period = self.cfg.liveness.period();
        !self.liveness.is_valid()
            && self.liveness.invalid_for() >= period
            && self.clock.mono_now().saturating_sub(self.started) >= period * 2
    }

    /// Transfers the lead of `g` to the voter outside this node's region (or any voter) whose
    /// log is the furthest along.
    pub(crate) async fn step_down<S: crate::raft::state_machine::GroupState>(&self, g: &Group<S>, st: &GroupStatus) {
        let best = membership_plan::handover_target(self.me, &st.voters, &st.matched, |n| self.directory.region_of(n));
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
        match membership_plan::membership_step(rec, &view, self.me, |n| self.directory.region_of(n)) {
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
        let (exposure, _) = self.writes.exposure_of(g);
        let rpo = Duration::from_millis(rec.spec.rpo_target_ms);
        let Some((next_state, kind)) = lag_gate::recovery_step(rec.state, exposure, rpo) else { return };
        let mut next = rec.clone();
        next.state = next_state;
        let ev = kind.map(|k| {
            TenantEvent::new(
                k,
                self.clock.wall_now_ms(),
                rec.epoch,
                rec.epoch,
                "every acked write is durable in another region again".into(),
            )
        });
        if self.directory.update_tenant(rec, next, ev).await.is_ok() {
            tracing::info!(tenant = %rec.spec.name, state = next_state.as_str(), "tenant state changed");
        }
    }

    /// Lists, once per old epoch, the writes this node holds durably from it that the current
    /// epoch lacks. They stay in the old group's rows and log.
    async fn report_tails(&self, rec: &TenantRecord) {
        let store = &self.store;
        let Ok(epochs) = epoch::local_epochs(store, &rec.spec.name) else { return };
        // Failovers from an epoch this node was a voter of but never started (it was promoted
        // and stopped before seeding, say): its seal answered for the newest earlier epoch it
        // holds, so that epoch's log is its durable state of the missing one, and its tail is
        // owed from there (sim seed 4251: without it, that failover's lost_writes_max was never
        // filled in). Owed until the meta group holds this node's tail, so no local marker.
        let owed: Vec<(u64, u64)> = {
            let meta = self.directory.meta().sm.read().await;
            meta.state
                .history
                .get(&rec.spec.name)
                .into_iter()
                .flatten()
                .filter(|ev| ev.from_epoch < rec.epoch && ev.to_epoch > ev.from_epoch)
                .filter(|ev| ev.old_voters.contains(&self.me) && !ev.tails.contains_key(&self.me))
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
            if self.hosted.get(&old).is_some() {
                continue;
            }
            if store.flush().await.is_err() {
                return;
            }
            let Ok(replica) = epoch::inspect(store, &old) else { continue };
            let Some(names) = self.current_catalog(rec).await else { return };
            let tail = epoch::divergent_tail(&replica, &names);
            let cmd =
                MetaCommand::ReportTail { tenant: rec.spec.name.clone(), epoch: e, node: self.me, tail: tail.clone() };
            if self.directory.propose_meta(cmd).await.is_ok() {
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
            let r = if to == self.me {
                self.serve_catalog_names(&group).await
            } else {
                match self.directory.call_peer(to, Request::CatalogNames { group: group.clone() }).await {
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
