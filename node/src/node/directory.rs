//! The node's client of the meta directory: proposals routed to whichever node leads the meta
//! group (with this node's reports batched while it leads, `report_batch.rs`), tenant records
//! read from the local replica or confirmed with the meta leader, record updates, placement
//! over the nodes the directory sees live, and calls to peers. It owns no mutable state of its
//! own beyond the report batcher; the meta group replica is shared with the loops that serve it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::report_batch::{Answer, ReportBatcher};
use crate::api::error::ApiError;
use crate::config::NodeConfig;
use crate::meta::state::{MetaCommand, MetaReply, MetaState, TenantEvent, TenantRecord, TenantSpec};
use crate::raft::group::{Group, WriteError};
use crate::raft::peers::PeerBook;
use crate::raft::wire::{self, Envelope, Reply, ReplyEnvelope, Request, WireError};
use crate::seams::clock::ClockRef;
use crate::seams::net::{NodeId, TransportRef};
use crate::tenant::placement::{self, NodeSlot};

/// How long a node waits for a peer when routing a client's request.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one meta proposal may wait on one candidate leader: a meta commit is one WAN quorum
/// round trip (150-300 ms), and a liveness renewal must get past a dead former leader quickly
/// enough to try the next candidate within one renewal interval.
const META_PROPOSE_TIMEOUT: Duration = Duration::from_millis(800);

/// The meta directory as this node reaches it.
pub(crate) struct Directory {
    me: NodeId,
    cfg: Arc<NodeConfig>,
    meta: Arc<Group<MetaState>>,
    meta_voters: Vec<NodeId>,
    /// This node's storage incarnation, sent with every request to a peer.
    incarnation: u64,
    transport: TransportRef,
    peers: PeerBook,
    clock: ClockRef,
    reports: Arc<ReportBatcher>,
}

impl Directory {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        me: NodeId,
        cfg: Arc<NodeConfig>,
        meta: Arc<Group<MetaState>>,
        incarnation: u64,
        transport: TransportRef,
        peers: PeerBook,
        clock: ClockRef,
    ) -> Self {
        let meta_voters =
            cfg.meta_voters.iter().filter_map(|n| cfg.nodes.iter().find(|p| &p.name == n).map(|p| p.id)).collect();
        let reports = Arc::new(ReportBatcher::new(me, meta.clone(), clock.clone(), cfg.liveness.renew_interval()));
        Self { me, cfg, meta, meta_voters, incarnation, transport, peers, clock, reports }
    }

    /// This node's meta group replica.
    pub(crate) fn meta(&self) -> &Arc<Group<MetaState>> {
        &self.meta
    }

    /// The region a node of the cluster lives in.
    pub(crate) fn region_of(&self, id: NodeId) -> Option<&str> {
        self.cfg.nodes.iter().find(|p| p.id == id).map(|p| p.region.as_str())
    }

    pub(crate) async fn call_peer(&self, to: NodeId, body: Request) -> Result<Reply, ApiError> {
        self.call_peer_within(to, body, PEER_TIMEOUT).await
    }

    pub(crate) async fn call_peer_within(
        &self,
        to: NodeId,
        body: Request,
        timeout: Duration,
    ) -> Result<Reply, ApiError> {
        let env = Envelope { from_incarnation: self.incarnation, body };
        let bytes = Bytes::from(wire::encode(&env));
        let reply = self.transport.call(to, bytes, timeout).await.map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let reply = wire::decode::<ReplyEnvelope>(&reply).map_err(|e| ApiError::Internal(e.to_string()))?;
        self.peers.check(to, reply.from_incarnation).map_err(ApiError::Unavailable)?;
        Ok(reply.body)
    }

    /// Proposes `cmd` on this node's meta replica (reports join the next batch while this node
    /// leads the meta group).
    pub(crate) async fn meta_write(&self, cmd: MetaCommand) -> Answer {
        self.reports.write(cmd).await
    }

    /// Proposes a meta command through whichever node leads the meta group.
    pub(crate) async fn propose_meta(&self, cmd: MetaCommand) -> Result<MetaReply, ApiError> {
        self.propose_meta_at(cmd).await.map(|(r, _)| r)
    }

    /// Like [`Directory::propose_meta`], with the meta log index the command committed at (0
    /// when the answer carries none: a refusal by a peer).
    pub(crate) async fn propose_meta_at(&self, cmd: MetaCommand) -> Result<(MetaReply, u64), ApiError> {
        let mut candidates: Vec<NodeId> = vec![];
        match self.meta_write(cmd.clone()).await {
            Ok((crate::raft::Reply::Meta(r), _, index)) => return Ok((r, index)),
            Ok((other, _, _)) => return Err(ApiError::Internal(format!("unexpected meta reply {other:?}"))),
            Err(WriteError::NotLeader(Some(l))) if l != self.me => candidates.push(l),
            Err(WriteError::NotLeader(_)) => {}
            Err(e) => return Err(e.into()),
        }
        candidates.extend(self.meta_voters.iter().copied().filter(|v| *v != self.me));
        let mut last = ApiError::Unavailable("no meta leader is known".into());
        let mut tried = std::collections::BTreeSet::new();
        let mut i = 0;
        while i < candidates.len() && tried.len() < 8 {
            let to = candidates[i];
            i += 1;
            if !tried.insert(to) {
                continue;
            }
            match self.call_peer_within(to, Request::MetaPropose { cmd: cmd.clone() }, META_PROPOSE_TIMEOUT).await {
                Ok(Reply::MetaAt { reply, index }) => return Ok((reply, index)),
                Ok(Reply::Meta(r)) => return Ok((r, 0)),
                Ok(Reply::Error(WireError::NotLeader(Some(l)))) => {
                    candidates.insert(i, l);
                }
                // A peer that refuses this node (its storage incarnation is not the one the
                // directory knows) answers for the whole meta group: say so, don't retry.
                Ok(Reply::Error(WireError::Refused(reason))) => return Ok((MetaReply::Refused { reason }, 0)),
                Ok(Reply::Error(e)) => last = ApiError::Unavailable(e.to_string()),
                Ok(other) => last = ApiError::Internal(format!("unexpected reply {other:?}")),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Compare-and-set of a tenant's record through the meta leader.
    pub(crate) async fn update_tenant(
        &self,
        current: &TenantRecord,
        next: TenantRecord,
        event: Option<TenantEvent>,
    ) -> Result<TenantRecord, ApiError> {
        match self
            .propose_meta(MetaCommand::UpdateTenant { expect_version: current.version, record: next, event })
            .await?
        {
            MetaReply::TenantUpdated(r) => Ok(r),
            MetaReply::Refused { reason } => Err(ApiError::Unavailable(reason)),
            other => Err(ApiError::Internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Asks the meta group to add this node as a learner, unless it is a member already.
    pub(crate) async fn join_meta_if_needed(&self) {
        let st = self.meta.status();
        let me = self.me;
        if st.voters.contains(&me) || st.learners.contains(&me) || self.meta_voters.contains(&me) {
            return;
        }
        for v in self.meta_voters.clone() {
            match self.call_peer(v, Request::JoinMeta { node: me }).await {
                Ok(Reply::Joined) => return,
                Ok(Reply::Error(WireError::NotLeader(Some(l)))) => {
                    if let Ok(Reply::Joined) = self.call_peer(l, Request::JoinMeta { node: me }).await {
                        return;
                    }
                }
                _ => {}
            }
        }
    }

    /// Bootstraps the meta group. Only a meta voter can; idempotent.
    pub(crate) async fn init_cluster(&self) -> Result<bool, ApiError> {
        if !self.meta_voters.contains(&self.me) {
            return Err(ApiError::BadRequest(format!(
                "{} is not a meta voter; ask one of {:?}",
                self.cfg.name, self.cfg.meta_voters
            )));
        }
        self.meta.initialize(&self.meta_voters).await.map_err(|e| ApiError::Internal(e.to_string()))
    }

    pub(crate) fn meta_leader(&self) -> Option<NodeId> {
        self.meta.term_leader().1
    }

    /// Waits (at most `bound`) until this node's meta replica has applied `index`.
    pub(crate) async fn wait_meta_applied(&self, index: u64, bound: Duration) -> bool {
        let start = self.clock.mono_now();
        loop {
            // The state machine's own applied position (it runs ahead of openraft's metrics by
            // at most one publication), read without cloning the group's metrics every 5 ms.
            if self.meta.sm.read().await.applied.is_some_and(|a| a.index >= index) {
                return true;
            }
            if self.clock.mono_now().saturating_sub(start) > bound {
                tracing::debug!(index, "the directory did not catch up with the renewal in time; lease not extended");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Whether the local directory still shows `epoch` of `tenant` as current and unsealed:
    /// checked right before an ack, after the lease (whose renewal waited for the directory).
    pub(crate) async fn epoch_current(&self, tenant: &str, epoch: u64) -> bool {
        let meta = self.meta.sm.read().await;
        meta.state.tenants.get(tenant).is_some_and(|r| r.epoch == epoch && !r.sealed)
    }

    /// A tenant's record as this node's replica of the directory has it (no confirmation).
    pub(crate) async fn local_record(&self, tenant: &str) -> Option<TenantRecord> {
        self.meta.sm.read().await.state.tenants.get(tenant).cloned()
    }

    /// A tenant's record. This node's replica of the directory may trail the meta leader (a
    /// tenant created a moment ago), so a miss is confirmed with the meta leader before the
    /// tenant is called unknown.
    pub(crate) async fn tenant_record(&self, name: &str) -> Result<TenantRecord, ApiError> {
        if let Some(r) = self.meta.sm.read().await.state.tenants.get(name).cloned() {
            return Ok(r);
        }
        let unknown = || ApiError::UnknownTenant(name.to_string());
        match self.meta.read_barrier().await {
            Ok(()) => return self.meta.sm.read().await.state.tenants.get(name).cloned().ok_or_else(unknown),
            Err(WriteError::NotLeader(hint)) => {
                let mut order: Vec<NodeId> = hint.into_iter().collect();
                order.extend(self.meta_voters.iter().copied().filter(|v| Some(*v) != hint && *v != self.me));
                for to in order {
                    match self.call_peer(to, Request::TenantLookup { name: name.to_string() }).await {
                        Ok(Reply::Tenant(Some(r))) => return Ok(r),
                        Ok(Reply::Tenant(None)) => return Err(unknown()),
                        _ => continue,
                    }
                }
                Err(ApiError::Unavailable(format!("cannot reach the meta leader to look tenant {name:?} up")))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn tenant_records(&self) -> Vec<TenantRecord> {
        self.meta.sm.read().await.state.tenants.values().cloned().collect()
    }

    pub(crate) fn topology(&self) -> Vec<NodeSlot> {
        self.cfg.nodes.iter().map(|p| NodeSlot { id: p.id, region: p.region.clone() }).collect()
    }

    /// Nodes whose liveness the directory saw renewed within one period (by this node's wall clock).
    pub(crate) async fn live_nodes(&self) -> BTreeMap<NodeId, u64> {
        let now = self.clock.wall_now_ms();
        let period = self.cfg.liveness.period_ms;
        let meta = self.meta.sm.read().await;
        meta.state
            .nodes
            .values()
            .filter(|r| now.saturating_sub(r.last_heartbeat_ms) <= period)
            .map(|r| (r.id, r.last_heartbeat_ms))
            .collect()
    }

    /// Places a tenant on nodes that are up (so its group can form at once), on the least
    /// loaded ones, keeping `current`'s members where they still fit.
    pub(crate) async fn place_for(
        &self,
        spec: &TenantSpec,
        current: Option<&TenantRecord>,
    ) -> Result<placement::Placement, ApiError> {
        let topo = self.topology();
        let mut load = self.meta.sm.read().await.state.load();
        if let Some(cur) = current {
            for m in cur.members() {
                load.insert(m, 0);
            }
        }
        let live = self.live_nodes().await;
        let live_topo: Vec<NodeSlot> = topo.iter().filter(|n| live.contains_key(&n.id)).cloned().collect();
        if live_topo.is_empty() {
            // Not the request's fault: right after start-up (or while the meta group has no
            // quorum) no liveness is known, and placing would say "no allowed region".
            return Err(ApiError::Unavailable(
                "no node's liveness is known yet (the cluster is starting, or the meta group lost its quorum); retry"
                    .into(),
            ));
        }
        placement::place(spec, &live_topo, &load).map_err(|e| ApiError::BadRequest(e.to_string()))
    }
}
