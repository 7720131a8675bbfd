//! What this node can tell about the groups and the cluster: probes of a tenant group's members
//! (who leads, how far each region lags), the leader of a tenant's group wherever it runs, the
//! cluster status view, and the digests and leader lists the simulator's oracles read. It owns
//! no state; it reads the hosted groups and the directory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::directory::Directory;
use super::hosted::HostedGroups;
use crate::api::status::{ClusterStatus, NodeView, TenantView};
use crate::config::NodeConfig;
use crate::meta::state::TenantRecord;
use crate::raft::wire::{GroupProbeReply, RegionLagWire, Reply, Request};
use crate::seams::clock::ClockRef;
use crate::seams::net::NodeId;

/// How long a probe of a group's members waits: one WAN round trip with room to spare.
const PROBE_TIMEOUT: Duration = Duration::from_millis(700);
/// How many tenants the status view probes at once.
const STATUS_CONCURRENCY: usize = 64;
/// The status view answers within this, probes or not.
const STATUS_DEADLINE: Duration = Duration::from_secs(3);

/// The leader the probes point at: one that says it leads, else the hint of the highest term.
fn best_leader(probes: &[(NodeId, GroupProbeReply)]) -> Option<NodeId> {
    if let Some((id, _)) = probes.iter().find(|(_, p)| p.is_leader) {
        return Some(*id);
    }
    probes.iter().filter(|(_, p)| p.leader.is_some()).max_by_key(|(_, p)| p.term).and_then(|(_, p)| p.leader)
}

/// Probes and status views.
pub(crate) struct Status {
    me: NodeId,
    cfg: Arc<NodeConfig>,
    clock: ClockRef,
    directory: Arc<Directory>,
    hosted: Arc<HostedGroups>,
}

impl Status {
    pub(super) fn new(
        me: NodeId,
        cfg: Arc<NodeConfig>,
        clock: ClockRef,
        directory: Arc<Directory>,
        hosted: Arc<HostedGroups>,
    ) -> Self {
        Self { me, cfg, clock, directory, hosted }
    }

    /// Finds who leads a tenant's group, asking its members when this node does not host it.
    pub(crate) async fn locate_leader(&self, rec: &TenantRecord) -> Option<NodeId> {
        if let Some(g) = self.hosted.get(&rec.group()) {
            if let Some(l) = g.term_leader().1 {
                return Some(l);
            }
        }
        // The first member that says it leads settles it; otherwise the best hint once every
        // member answered or timed out.
        use futures::stream::StreamExt;
        let mut asks = self.probe_stream(rec, None);
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
    /// `only`, when given, limits the probes to those nodes.
    async fn probe_members(&self, rec: &TenantRecord, only: Option<&[NodeId]>) -> Vec<(NodeId, GroupProbeReply)> {
        use futures::stream::StreamExt;
        self.probe_stream(rec, only).filter_map(|p| async move { p }).collect().await
    }

    /// The probes of [`Status::probe_members`], answered in the order they arrive.
    fn probe_stream<'a>(
        &'a self,
        rec: &TenantRecord,
        only: Option<&[NodeId]>,
    ) -> futures::stream::FuturesUnordered<impl std::future::Future<Output = Option<(NodeId, GroupProbeReply)>> + 'a>
    {
        let group = rec.group();
        rec.members()
            .filter(|m| *m != self.me && only.is_none_or(|o| o.contains(m)))
            .map(|m| {
                let group = group.clone();
                async move {
                    match self.directory.call_peer_within(m, Request::GroupProbe { group }, PROBE_TIMEOUT).await {
                        Ok(Reply::Probe(p)) => Some((m, p)),
                        _ => None,
                    }
                }
            })
            .collect()
    }

    /// What this node knows of a group it hosts (with lag per region if it leads).
    pub(crate) async fn probe_local(&self, group: &str) -> Option<GroupProbeReply> {
        let g = self.hosted.get(group)?;
        let st = g.status();
        let sm = g.sm.read().await;
        let mut lag = vec![];
        if st.is_leader {
            let last = sm.state.last_mark();
            let now = self.clock.wall_now_ms();
            let mut best: BTreeMap<String, Option<u64>> = BTreeMap::new();
            let members = st.voters.iter().chain(st.learners.iter());
            for m in members {
                let Some(region) = self.directory.region_of(*m) else { continue };
                let matched = if *m == self.me { Some(st.last_index) } else { st.matched.get(m).copied().flatten() };
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
    async fn probe_tenant(&self, rec: &TenantRecord, up: &[NodeId]) -> Option<GroupProbeReply> {
        let local = self.probe_local(&rec.group()).await;
        if let Some(p) = &local {
            if p.is_leader {
                return local;
            }
        }
        // Members whose liveness lapsed would only cost the probe's timeout; but when none looks
        // up (the meta group itself may be stalled, so no renewal applies) ask them all.
        let asked = if rec.members().any(|m| m != self.me && up.contains(&m)) { Some(up) } else { None };
        let probes = self.probe_members(rec, asked).await;
        if let Some((_, p)) = probes.iter().find(|(_, p)| p.is_leader) {
            return Some(p.clone());
        }
        local.or_else(|| probes.into_iter().max_by_key(|(_, p)| p.term).map(|(_, p)| p))
    }

    pub(crate) async fn status(&self) -> ClusterStatus {
        let now = self.clock.wall_now_ms();
        let period = self.cfg.liveness.period_ms;
        let (records, beats): (Vec<TenantRecord>, BTreeMap<NodeId, u64>) = {
            let meta = self.directory.meta().sm.read().await;
            (
                meta.state.tenants.values().cloned().collect(),
                meta.state.nodes.values().map(|r| (r.id, r.last_heartbeat_ms)).collect(),
            )
        };
        let nodes: Vec<NodeView> = self
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
        // Probe the tenants together (in their directory order), asking only members whose node
        // liveness looks current, under one deadline: a region outage with many tenants then
        // costs about one probe timeout in all rather than one per tenant. A tenant not probed by
        // the deadline is shown from its record alone, as one whose members did not answer.
        let up: Vec<NodeId> = nodes.iter().filter(|n| n.up).map(|n| n.id).collect();
        let deadline = crate::seams::clock::scheduling_now() + STATUS_DEADLINE;
        use futures::stream::StreamExt;
        let tenants = futures::stream::iter(records)
            .map(|r| {
                let up = &up;
                async move {
                    let probe = tokio::time::timeout_at(deadline, self.probe_tenant(&r, up)).await.ok().flatten();
                    TenantView { record: r, probe }
                }
            })
            .buffered(STATUS_CONCURRENCY)
            .collect()
            .await;
        ClusterStatus { nodes, meta_leader: self.directory.meta_leader(), tenants }
    }

    /// A digest of this replica's applied catalog for `group`: (applied index, segments, hash).
    /// The simulator compares replicas with it after faults heal.
    pub(crate) async fn replica_digest(&self, group: &str) -> Option<(u64, u64, [u8; 32])> {
        let g = self.hosted.get(group)?;
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
    pub(crate) fn led_group_matched(&self) -> Vec<(String, BTreeMap<NodeId, Option<u64>>)> {
        self.hosted
            .all()
            .into_iter()
            .filter_map(|g| {
                let st = g.status();
                st.is_leader.then(|| (g.name.clone(), st.matched))
            })
            .collect()
    }

    /// (term, leader) of every group this node runs, for the one-leader-per-term oracle.
    pub(crate) fn group_leaders(&self) -> Vec<(String, u64, Option<NodeId>)> {
        let mut out = vec![];
        let (term, leader) = self.directory.meta().term_leader();
        out.push((crate::meta::META_GROUP.to_string(), term, leader));
        for (name, g) in self.hosted.named() {
            let (term, leader) = g.term_leader();
            out.push((name, term, leader));
        }
        out
    }
}
