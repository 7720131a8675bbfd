//! What clients and operators can ask of a node, in tetrad's terms. The gRPC service maps these
//! to the wire; the simulator's clients call them directly.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use super::Node;
pub use crate::api::error::ApiError;
pub use crate::api::status::{ClusterStatus, NodeView, TenantView};
use crate::meta::state::{MetaCommand, MetaReply, Mode, OnLag, TenantRecord, TenantSpec, TenantState as TState};
use crate::raft::group::WriteError;
use crate::raft::wire::{self, Envelope, GroupProbeReply, RegionLagWire, Reply, ReplyEnvelope, Request, WireError};
use crate::raft::Command;
use crate::seams::net::NodeId;
use crate::storage::chunks::Hash;
use crate::tenant::catalog::{validate_name, SegmentRecord, TenantCommand, TenantReply, MAX_SEGMENT_BYTES};
use crate::tenant::placement::{self, NodeSlot};

/// How long a node waits for a peer when routing a client's request.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one meta proposal may wait on one candidate leader: a meta commit is one WAN quorum
/// round trip (150-300 ms), and a liveness renewal must get past a dead former leader quickly
/// enough to try the next candidate within one renewal interval.
const META_PROPOSE_TIMEOUT: Duration = Duration::from_millis(800);
/// How long a probe of a group's members waits: one WAN round trip with room to spare.
const PROBE_TIMEOUT: Duration = Duration::from_millis(700);
/// How long a push to a replica that knows no leader waits for an election to end.
const ELECTION_WAIT: Duration = Duration::from_millis(1_000);

/// The leader the probes point at: one that says it leads, else the hint of the highest term.
fn best_leader(probes: &[(NodeId, GroupProbeReply)]) -> Option<NodeId> {
    if let Some((id, _)) = probes.iter().find(|(_, p)| p.is_leader) {
        return Some(*id);
    }
    probes.iter().filter(|(_, p)| p.leader.is_some()).max_by_key(|(_, p)| p.term).and_then(|(_, p)| p.leader)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOutcome {
    pub already_present: bool,
    pub size: u64,
    pub blake3: Hash,
    pub epoch: u64,
    pub term: u64,
    pub index: u64,
}

fn valid_tenant_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "tenant name {name:?} must be 1-63 characters of a-z, 0-9, '-' and '_', not starting with '-'"
        )))
    }
}

impl Node {
    pub(super) async fn call_peer(&self, to: NodeId, body: Request) -> Result<Reply, ApiError> {
        self.call_peer_within(to, body, PEER_TIMEOUT).await
    }

    pub(super) async fn call_peer_within(
        &self,
        to: NodeId,
        body: Request,
        timeout: Duration,
    ) -> Result<Reply, ApiError> {
        let env = Envelope { from_incarnation: self.inner.store.incarnation(), body };
        let bytes = Bytes::from(wire::encode(&env));
        let reply =
            self.inner.transport.call(to, bytes, timeout).await.map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let reply = wire::decode::<ReplyEnvelope>(&reply).map_err(|e| ApiError::Internal(e.to_string()))?;
        self.inner.peers.check(to, reply.from_incarnation).map_err(ApiError::Unavailable)?;
        Ok(reply.body)
    }

    /// Proposes a meta command through whichever node leads the meta group.
    pub async fn propose_meta(&self, cmd: MetaCommand) -> Result<MetaReply, ApiError> {
        self.propose_meta_at(cmd).await.map(|(r, _)| r)
    }

    /// Like [`Node::propose_meta`], with the meta log index the command committed at (0 when
    /// the answer carries none: a refusal by a peer).
    pub async fn propose_meta_at(&self, cmd: MetaCommand) -> Result<(MetaReply, u64), ApiError> {
        let mut candidates: Vec<NodeId> = vec![];
        match self.meta_write(cmd.clone()).await {
            Ok((crate::raft::Reply::Meta(r), _, index)) => return Ok((r, index)),
            Ok((other, _, _)) => return Err(ApiError::Internal(format!("unexpected meta reply {other:?}"))),
            Err(WriteError::NotLeader(Some(l))) if l != self.inner.me => candidates.push(l),
            Err(WriteError::NotLeader(_)) => {}
            Err(e) => return Err(e.into()),
        }
        candidates.extend(self.inner.meta_voters.iter().copied().filter(|v| *v != self.inner.me));
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

    /// Asks the meta group to add this node as a learner, unless it is a member already.
    pub(super) async fn join_meta_if_needed(&self) {
        let st = self.inner.meta.status();
        let me = self.inner.me;
        if st.voters.contains(&me) || st.learners.contains(&me) || self.inner.meta_voters.contains(&me) {
            return;
        }
        for v in self.inner.meta_voters.clone() {
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
    pub async fn init_cluster(&self) -> Result<bool, ApiError> {
        if !self.inner.meta_voters.contains(&self.inner.me) {
            return Err(ApiError::BadRequest(format!(
                "{} is not a meta voter; ask one of {:?}",
                self.name(),
                self.inner.cfg.meta_voters
            )));
        }
        self.inner.meta.initialize(&self.inner.meta_voters).await.map_err(|e| ApiError::Internal(e.to_string()))
    }

    pub fn meta_leader(&self) -> Option<NodeId> {
        self.inner.meta.term_leader().1
    }

    fn topology(&self) -> Vec<NodeSlot> {
        self.inner.cfg.nodes.iter().map(|p| NodeSlot { id: p.id, region: p.region.clone() }).collect()
    }

    /// Nodes whose liveness the directory saw renewed within one period (by this node's wall clock).
    async fn live_nodes(&self) -> BTreeMap<NodeId, u64> {
        let now = self.inner.clock.wall_now_ms();
        let period = self.inner.cfg.liveness.period_ms;
        let meta = self.inner.meta.sm.read().await;
        meta.state
            .nodes
            .values()
            .filter(|r| now.saturating_sub(r.last_heartbeat_ms) <= period)
            .map(|r| (r.id, r.last_heartbeat_ms))
            .collect()
    }

    pub async fn create_tenant(
        &self,
        name: &str,
        mode: &str,
        primary: Option<&str>,
        rpo_target_ms: u64,
        on_lag: &str,
        regions: &[String],
    ) -> Result<TenantRecord, ApiError> {
        valid_tenant_name(name)?;
        let mode = Mode::parse(mode)
            .ok_or_else(|| ApiError::BadRequest(format!("unknown mode {mode:?}: sync, near-sync or async")))?;
        let on_lag = if on_lag.is_empty() {
            OnLag::Block
        } else {
            OnLag::parse(on_lag).map_err(|e| ApiError::BadRequest(e.to_string()))?
        };
        let topo = self.topology();
        let primaries = {
            let meta = self.inner.meta.sm.read().await;
            if let Some(existing) = meta.state.tenants.get(name) {
                // Idempotent create: same spec answers with the existing record.
                let same = existing.spec.mode == mode && primary.is_none_or(|p| p == existing.spec.primary);
                if same {
                    return Ok(existing.clone());
                }
            }
            meta.state.primaries_per_region()
        };
        let primary = match primary {
            Some(p) => p.to_string(),
            None => placement::default_primary(&topo, regions, &primaries)
                .ok_or_else(|| ApiError::BadRequest("no region is available for the tenant".into()))?,
        };
        let spec =
            TenantSpec { name: name.to_string(), mode, primary, rpo_target_ms, on_lag, regions: regions.to_vec() };
        if mode == Mode::NearSync && spec.rpo_target_ms == 0 {
            return Err(ApiError::BadRequest("near-sync needs an rpo target above zero (e.g. --rpo-target 1s)".into()));
        }
        let placed = self.place_for(&spec, None).await?;
        let record = TenantRecord {
            spec,
            epoch: 1,
            founder: placed.voters[0],
            voters: placed.voters,
            learners: placed.learners,
            created_at_ms: self.inner.clock.wall_now_ms(),
            state: TState::Healthy,
            version: 0,
            base: None,
            sealed: false,
            failover_to: None,
            acked: None,
        };
        match self.propose_meta(MetaCommand::CreateTenant { record }).await? {
            MetaReply::TenantCreated(r) | MetaReply::TenantExists(r) => Ok(r),
            MetaReply::Refused { reason } => Err(ApiError::BadRequest(reason)),
            other => Err(ApiError::Internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Places a tenant on nodes that are up (so its group can form at once), on the least
    /// loaded ones, keeping `current`'s members where they still fit.
    pub(crate) async fn place_for(
        &self,
        spec: &TenantSpec,
        current: Option<&TenantRecord>,
    ) -> Result<placement::Placement, ApiError> {
        let topo = self.topology();
        let mut load = self.inner.meta.sm.read().await.state.load();
        if let Some(cur) = current {
            for m in cur.members() {
                load.insert(m, 0);
            }
        }
        let live = self.live_nodes().await;
        let live_topo: Vec<NodeSlot> = topo.iter().filter(|n| live.contains_key(&n.id)).cloned().collect();
        placement::place(spec, &live_topo, &load).map_err(|e| ApiError::BadRequest(e.to_string()))
    }

    /// A tenant's record. This node's replica of the directory may trail the meta leader (a
    /// tenant created a moment ago), so a miss is confirmed with the meta leader before the
    /// tenant is called unknown.
    pub async fn tenant_record(&self, name: &str) -> Result<TenantRecord, ApiError> {
        if let Some(r) = self.inner.meta.sm.read().await.state.tenants.get(name).cloned() {
            return Ok(r);
        }
        let unknown = || ApiError::UnknownTenant(name.to_string());
        match self.inner.meta.read_barrier().await {
            Ok(()) => return self.inner.meta.sm.read().await.state.tenants.get(name).cloned().ok_or_else(unknown),
            Err(WriteError::NotLeader(hint)) => {
                let mut order: Vec<NodeId> = hint.into_iter().collect();
                order
                    .extend(self.inner.meta_voters.iter().copied().filter(|v| Some(*v) != hint && *v != self.inner.me));
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

    pub async fn tenant_records(&self) -> Vec<TenantRecord> {
        self.inner.meta.sm.read().await.state.tenants.values().cloned().collect()
    }

    /// Finds who leads a tenant's group, asking its members when this node does not host it.
    pub(super) async fn locate_leader(&self, rec: &TenantRecord) -> Option<NodeId> {
        if let Some(g) = self.tenant_group(&rec.group()) {
            if let Some(l) = g.term_leader().1 {
                return Some(l);
            }
        }
        // The first member that says it leads settles it; otherwise the best hint once every
        // member answered or timed out.
        use futures::stream::StreamExt;
        let mut asks = self.probe_stream(rec);
        let mut probes = Vec::new();
        while let Some(p) = asks.next().await {
            if let Some((id, reply)) = p {
                if reply.is_leader {
                    return Some(id);
                }
                probes.push((id, reply));
            }
        }
        best_leader(&probes)
    }

    /// Asks every other member of a tenant's group what it knows, all at once, so that dead
    /// members cost one short timeout in total rather than one each.
    async fn probe_members(&self, rec: &TenantRecord) -> Vec<(NodeId, GroupProbeReply)> {
        use futures::stream::StreamExt;
        self.probe_stream(rec).filter_map(|p| async move { p }).collect().await
    }

    /// The probes of [`Node::probe_members`], answered in the order they arrive.
    fn probe_stream<'a>(
        &'a self,
        rec: &TenantRecord,
    ) -> futures::stream::FuturesUnordered<impl std::future::Future<Output = Option<(NodeId, GroupProbeReply)>> + 'a>
    {
        let group = rec.group();
        rec.members()
            .filter(|m| *m != self.inner.me)
            .map(|m| {
                let group = group.clone();
                async move {
                    match self.call_peer_within(m, Request::GroupProbe { group }, PROBE_TIMEOUT).await {
                        Ok(Reply::Probe(p)) => Some((m, p)),
                        _ => None,
                    }
                }
            })
            .collect()
    }

    /// Stores one WAL segment. Answers only once it is durable as the tenant's mode promises and
    /// this node's liveness lease is valid.
    pub async fn push(&self, tenant: &str, name: &str, blake3: Hash, data: Vec<u8>) -> Result<PushOutcome, ApiError> {
        validate_name(name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        if data.len() as u64 > MAX_SEGMENT_BYTES {
            return Err(ApiError::BadRequest(format!("segment is larger than {MAX_SEGMENT_BYTES} bytes")));
        }
        let rec = self.tenant_record(tenant).await?;
        if rec.sealed {
            return Err(ApiError::Unavailable(format!(
                "tenant {tenant}'s epoch {} is sealed: a failover is promoting a new epoch; retry shortly",
                rec.epoch
            )));
        }
        let Some(g) = self.tenant_group(&rec.group()) else {
            return Err(ApiError::NotLeader { leader: self.locate_leader(&rec).await });
        };
        if !g.status().is_leader {
            // No leader known here: an election is under way (or this replica is cut off).
            // Waiting for its outcome answers the client with the new leader, or takes the
            // write here if this node won, instead of sending it on a round of probes.
            let leader = match g.wait_leader(ELECTION_WAIT).await {
                Some(l) => Some(l),
                None => self.locate_leader(&rec).await,
            };
            if leader != Some(self.inner.me) || !g.status().is_leader {
                return Err(ApiError::NotLeader { leader });
            }
        }
        let ignore_lease = crate::planted::on(crate::planted::Bug::IgnoreLease);
        if !self.inner.liveness.is_valid() && !ignore_lease {
            return Err(ApiError::Unavailable(
                "this node's liveness lease is not valid; it acks nothing until it renews".into(),
            ));
        }
        // Checked here, by the node about to propose it, not by every node a client tries first:
        // a client looking for the leader (or waiting out a failover) asks several, and hashing
        // each attempt cost the simulator 3% of its time.
        if ::blake3::hash(&data).as_bytes() != &blake3 {
            return Err(ApiError::BadRequest("the segment's bytes do not match the blake3 in its header".into()));
        }
        let proposed_at_ms = self.inner.clock.wall_now_ms();
        let cmd = TenantCommand::PutSegment { name: name.to_string(), blake3, data, proposed_at_ms };
        #[cfg(feature = "planted-bugs")]
        if crate::planted::on(crate::planted::Bug::AckBeforeCommit) {
            return crate::planted::ack_before_commit(&g, cmd, rec.epoch).await;
        }
        let (reply, term, index) = g.write(Command::Tenant(cmd)).await?;
        // near-sync: the lag gate, between the commit and the ack.
        self.lag_gate(&g, tenant).await?;
        // Fencing: checked after the write is durable and just before the ack.
        if !self.inner.liveness.is_valid() && !ignore_lease {
            return Err(ApiError::OutcomeUnknown(
                "the write committed, but this node's liveness lease lapsed before the ack".into(),
            ));
        }
        if !self.epoch_current(tenant, rec.epoch).await && !ignore_lease {
            return Err(ApiError::OutcomeUnknown(format!(
                "the write committed in epoch {}, but the meta group has sealed or replaced that epoch",
                rec.epoch
            )));
        }
        let writes = g.sm.read().await.state.mark_at(index).map(|m| m.writes).unwrap_or(0);
        self.note_ack(&g, &rec, crate::meta::state::AckMark { term, index, writes, proposed_at_ms });
        match reply {
            crate::raft::Reply::Tenant(TenantReply::Stored { already_present, size, blake3, index, term }) => {
                Ok(PushOutcome { already_present, size, blake3, epoch: rec.epoch, term, index })
            }
            crate::raft::Reply::Tenant(TenantReply::Conflict { existing, existing_size }) => Err(ApiError::Conflict {
                name: name.to_string(),
                existing: crate::storage::chunks::hex(&existing),
                existing_size,
            }),
            crate::raft::Reply::Tenant(TenantReply::Invalid { reason }) => Err(ApiError::BadRequest(reason)),
            other => Err(ApiError::Internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// The group of a tenant when this node leads it, after a linearizable read barrier.
    async fn leading_group_for_read(
        &self,
        tenant: &str,
    ) -> Result<std::sync::Arc<crate::raft::group::Group<crate::tenant::group_state::TenantState>>, ApiError> {
        let rec = self.tenant_record(tenant).await?;
        let Some(g) = self.tenant_group(&rec.group()) else {
            return Err(ApiError::NotLeader { leader: self.locate_leader(&rec).await });
        };
        g.read_barrier().await?;
        Ok(g)
    }

    /// Looks a segment up (linearizable). Its bytes are read with [`Node::read_chunk`].
    pub async fn segment(&self, tenant: &str, name: &str) -> Result<SegmentRecord, ApiError> {
        let g = self.leading_group_for_read(tenant).await?;
        let sm = g.sm.read().await;
        sm.state.catalog.segments.get(name).cloned().ok_or_else(|| ApiError::UnknownSegment(name.to_string()))
    }

    /// Reads one chunk of a tenant's segment from this node's disk, verifying its hash; a damaged
    /// copy is first repaired from another replica (`repair.rs`), and never served.
    pub async fn read_chunk(&self, tenant: &str, hash: &Hash) -> Result<Vec<u8>, ApiError> {
        let rec = self.tenant_record(tenant).await?;
        let g = self.tenant_group(&rec.group()).ok_or_else(|| ApiError::Unavailable("group moved away".into()))?;
        let chunks = g.sm.read().await.state.chunks.clone();
        chunks.get_or_repair(hash).await.map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// Reads a whole segment (linearizable), verifying every chunk and the whole.
    pub async fn fetch(&self, tenant: &str, name: &str) -> Result<(SegmentRecord, Vec<u8>), ApiError> {
        let rec = self.segment(tenant, name).await?;
        let mut data = Vec::with_capacity(rec.size as usize);
        for h in &rec.chunks {
            data.extend(self.read_chunk(tenant, h).await?);
        }
        if ::blake3::hash(&data).as_bytes() != &rec.blake3 {
            return Err(ApiError::Internal(format!("segment {name} failed its blake3 check on this replica")));
        }
        Ok((rec, data))
    }

    /// Lists a tenant's segments (linearizable).
    pub async fn list(&self, tenant: &str, prefix: &str) -> Result<Vec<SegmentRecord>, ApiError> {
        let g = self.leading_group_for_read(tenant).await?;
        let sm = g.sm.read().await;
        Ok(sm
            .state
            .catalog
            .segments
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect())
    }

    /// What this node knows of a group it hosts (with lag per region if it leads).
    pub async fn probe_local(&self, group: &str) -> Option<GroupProbeReply> {
        let g = self.tenant_group(group)?;
        let st = g.status();
        let sm = g.sm.read().await;
        let mut lag = vec![];
        if st.is_leader {
            let last = sm.state.last_mark();
            let now = self.inner.clock.wall_now_ms();
            let mut best: BTreeMap<String, Option<u64>> = BTreeMap::new();
            let members = st.voters.iter().chain(st.learners.iter());
            for m in members {
                let Some(region) = self.region_of(*m) else { continue };
                let matched =
                    if *m == self.inner.me { Some(st.last_index) } else { st.matched.get(m).copied().flatten() };
                let e = best.entry(region.to_string()).or_insert(None);
                *e = (*e).max(matched);
            }
            for (region, matched) in best {
                let (writes, bytes, seconds) = match (last, matched) {
                    (None, _) => (0, 0, 0.0),
                    (Some(l), Some(m)) if m >= l.index => (0, 0, 0.0),
                    (Some(l), m) => {
                        let base = m.and_then(|m| sm.state.mark_at(m));
                        let (w0, b0) = base.map(|b| (b.writes, b.bytes)).unwrap_or((0, 0));
                        let since = sm.state.first_timed_after(m.unwrap_or(0)).and_then(|x| x.proposed_at_ms);
                        let secs = since.map(|t| now.saturating_sub(t) as f64 / 1000.0).unwrap_or(0.0);
                        (l.writes.saturating_sub(w0), l.bytes.saturating_sub(b0), secs)
                    }
                };
                lag.push(RegionLagWire { region, writes, bytes, seconds });
            }
        }
        Some(GroupProbeReply {
            leader: st.leader,
            term: st.term,
            is_leader: st.is_leader,
            last_index: st.last_index,
            applied_index: st.applied_index,
            lag,
            segments: sm.state.catalog.segments.len() as u64,
        })
    }

    /// The leader's probe of a tenant's group, asking members when needed.
    async fn probe_tenant(&self, rec: &TenantRecord) -> Option<GroupProbeReply> {
        let local = self.probe_local(&rec.group()).await;
        if let Some(p) = &local {
            if p.is_leader {
                return local;
            }
        }
        let probes = self.probe_members(rec).await;
        if let Some((_, p)) = probes.iter().find(|(_, p)| p.is_leader) {
            return Some(p.clone());
        }
        local.or_else(|| probes.into_iter().max_by_key(|(_, p)| p.term).map(|(_, p)| p))
    }

    pub async fn status(&self) -> ClusterStatus {
        let now = self.inner.clock.wall_now_ms();
        let period = self.inner.cfg.liveness.period_ms;
        let (records, beats): (Vec<TenantRecord>, BTreeMap<NodeId, u64>) = {
            let meta = self.inner.meta.sm.read().await;
            (
                meta.state.tenants.values().cloned().collect(),
                meta.state.nodes.values().map(|r| (r.id, r.last_heartbeat_ms)).collect(),
            )
        };
        let nodes = self
            .inner
            .cfg
            .nodes
            .iter()
            .map(|p| {
                let ago = beats.get(&p.id).map(|t| now.saturating_sub(*t));
                NodeView {
                    id: p.id,
                    name: p.name.clone(),
                    region: p.region.clone(),
                    up: ago.is_some_and(|a| a <= period),
                    api_addr: p.api_addr,
                    last_heartbeat_ago_ms: ago,
                }
            })
            .collect();
        let mut tenants = vec![];
        for r in records {
            let probe = self.probe_tenant(&r).await;
            tenants.push(TenantView { record: r, probe });
        }
        ClusterStatus { nodes, meta_leader: self.meta_leader(), tenants }
    }
}

impl Node {
    /// A digest of this replica's applied catalog for `group`: (applied index, segments, hash).
    /// The simulator compares replicas with it after faults heal.
    pub async fn replica_digest(&self, group: &str) -> Option<(u64, u64, [u8; 32])> {
        let g = self.tenant_group(group)?;
        let sm = g.sm.read().await;
        let mut h = ::blake3::Hasher::new();
        for (name, rec) in &sm.state.catalog.segments {
            h.update(name.as_bytes());
            h.update(&rec.blake3);
        }
        Some((
            sm.applied.map(|l| l.index).unwrap_or(0),
            sm.state.catalog.segments.len() as u64,
            *h.finalize().as_bytes(),
        ))
    }

    /// For every tenant group this node leads: each member's matched (flushed) log index as
    /// the leader knows it. The simulator uses it to aim a fault at the replica that holds the
    /// newest writes outside the leader's region.
    pub fn led_group_matched(&self) -> Vec<(String, BTreeMap<NodeId, Option<u64>>)> {
        let groups: Vec<_> = self.inner.tenants.lock().expect("tenants lock").values().cloned().collect();
        groups
            .into_iter()
            .filter_map(|g| {
                let st = g.status();
                st.is_leader.then(|| (g.name.clone(), st.matched))
            })
            .collect()
    }

    /// (term, leader) of every group this node runs, for the one-leader-per-term oracle.
    pub fn group_leaders(&self) -> Vec<(String, u64, Option<NodeId>)> {
        let mut out = vec![];
        let (term, leader) = self.inner.meta.term_leader();
        out.push((crate::meta::META_GROUP.to_string(), term, leader));
        for (name, g) in self.inner.tenants.lock().expect("tenants lock").iter() {
            let (term, leader) = g.term_leader();
            out.push((name.clone(), term, leader));
        }
        out
    }
}
