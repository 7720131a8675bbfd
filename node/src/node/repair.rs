//! Chunk repair and the chunk scrub (DESIGN.md "Verification": every chunk on every replica is
//! checked, and a mismatch is repaired from a healthy copy).
//!
//! A replica whose copy of a chunk rotted or went missing fetches it from another member of the
//! chunk's group ([`PeerChunks`], the [`ChunkSource`] each tenant group's chunk store gets when
//! the group starts here), verifies it and rewrites it durably (`ChunkStore::get_or_repair`).
//! Four paths repair: a snapshot's build and install (`GroupState::ensure_referenced`), the log
//! store reading back a sideloaded record (`GroupLog::inflate`), the read path
//! (`Reads::read_chunk`), and the scrub ([`Scrub`], stepped by the loop in `tasks.rs`), which
//! checks every chunk that the node's tenant catalogs reference, a bounded number of bytes per
//! step. The serving side is [`Repair::serve_chunk`]: it answers members of the group only, for
//! chunks the group's catalog references, with bytes that match their hash.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

use super::directory::Directory;
use super::hosted::HostedGroups;
use crate::config::NodeConfig;
use crate::raft::group::Group;
use crate::raft::peers::PeerBook;
use crate::raft::wire::{self, Envelope, Reply, ReplyEnvelope, Request, WireError};
use crate::seams::net::{NodeId, TransportRef};
use crate::storage::chunks::{hex, Checked, ChunkSource, Fetched, Hash};
use crate::storage::store::{blocking, Store};
use crate::tenant::group_state::{rows_reference_chunk, TenantState};

/// How long one peer may take to send one chunk (up to 1 MiB, possibly across a WAN).
const FETCH_CHUNK_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many peers are asked for one chunk.
const MAX_PEERS_ASKED: usize = 8;
/// Segment bytes whose chunks one scrub step checks (rounded up to whole segments).
pub(super) const SCRUB_STEP_BYTES: u64 = 8 << 20;
/// Pause between two scrub steps of one pass: with the step size, at most 8 MiB/s of reads.
pub(super) const SCRUB_STEP_EVERY: Duration = Duration::from_secs(1);
/// Pause between the end of one scrub pass and the start of the next.
pub(super) const SCRUB_PASS_EVERY: Duration = Duration::from_secs(30);

/// Fetches chunks of one tenant group from the group's other members.
pub(super) struct PeerChunks {
    repair: Weak<Repair>,
    group: String,
}

impl ChunkSource for PeerChunks {
    fn fetch(&self, hash: Hash) -> BoxFuture<'static, Result<Fetched, String>> {
        let repair = self.repair.upgrade();
        let group = self.group.clone();
        Box::pin(async move {
            match repair {
                Some(repair) => repair.fetch_chunk(&group, hash).await,
                None => Err("the node is stopping".into()),
            }
        })
    }
}

/// Where the scrub is in its pass over the node's tenant groups (in name order).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) enum ScrubPosition {
    #[default]
    Start,
    /// Inside `group`, after segment `after` (from its first segment when `None`).
    In { group: String, after: Option<String> },
    /// Done with `group`.
    After { group: String },
}

/// The group to scrub next and the segment to start after; `None` when the pass is complete.
/// `groups` are the groups hosted now, sorted; a group that went away is skipped.
pub(super) fn next_in_pass(groups: &[String], at: &ScrubPosition) -> Option<(String, Option<String>)> {
    let first_after = |g: &str| groups.iter().find(|x| x.as_str() > g).map(|x| (x.clone(), None));
    match at {
        ScrubPosition::Start => groups.first().map(|g| (g.clone(), None)),
        ScrubPosition::In { group, after } if groups.contains(group) => Some((group.clone(), after.clone())),
        ScrubPosition::In { group, .. } | ScrubPosition::After { group } => first_after(group),
    }
}

/// The scrub's position and the totals of its current pass.
#[derive(Debug, Default)]
pub(super) struct Scrub {
    at: ScrubPosition,
    checked: u64,
    repaired: u64,
    unrepaired: u64,
}

/// Chunk repair, both sides: fetching a healthy copy from peers and serving this node's copies.
pub(crate) struct Repair {
    me: NodeId,
    cfg: Arc<NodeConfig>,
    store: Arc<Store>,
    transport: TransportRef,
    peers: PeerBook,
    directory: Arc<Directory>,
    hosted: Arc<HostedGroups>,
}

impl Repair {
    pub(super) fn new(
        me: NodeId,
        cfg: Arc<NodeConfig>,
        store: Arc<Store>,
        transport: TransportRef,
        peers: PeerBook,
        directory: Arc<Directory>,
        hosted: Arc<HostedGroups>,
    ) -> Self {
        Self { me, cfg, store, transport, peers, directory, hosted }
    }

    fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Lets a tenant group's chunk store repair damaged chunks from the group's other members.
    pub(super) async fn attach(this: &Arc<Self>, g: &Group<TenantState>) {
        g.sm.write().await.state.set_chunk_source(Self::source_for(this, &g.name));
    }

    /// The repair source of `group`'s chunks: its other members.
    pub(super) fn source_for(this: &Arc<Self>, group: &str) -> Arc<dyn ChunkSource> {
        Arc::new(PeerChunks { repair: Arc::downgrade(this), group: group.to_string() })
    }

    /// Chunks this node repaired from peers since its tenant groups started here.
    pub(crate) async fn chunk_repairs(&self) -> u64 {
        let groups = self.hosted.all();
        let mut n = 0;
        for g in groups {
            n += g.sm.read().await.state.chunks.repairs();
        }
        n
    }

    /// The members of a tenant group as this node knows them: the group's Raft membership if it
    /// runs here, and the directory's record of that group (a replica that just joined, or a
    /// group whose membership has not reached this node yet, may know only one of the two).
    async fn group_members(&self, group: &str) -> BTreeSet<NodeId> {
        let mut members = BTreeSet::new();
        if let Some(g) = self.hosted.get(group) {
            let st = g.status();
            members.extend(st.voters.iter().chain(st.learners.iter()).copied());
        }
        let meta = self.directory.meta().sm.read().await;
        if let Some(rec) = meta.state.tenants.values().find(|r| r.group() == group) {
            members.extend(rec.members());
        }
        members
    }

    /// A healthy copy of chunk `hash` from another member of `group`: nearby members first (a
    /// chunk is up to 1 MiB), each answer checked against the hash.
    async fn fetch_chunk(&self, group: &str, hash: Hash) -> Result<Fetched, String> {
        let me = self.me;
        let here = self.directory.region_of(me).map(str::to_string);
        let mut peers: Vec<NodeId> = self.group_members(group).await.into_iter().filter(|m| *m != me).collect();
        peers.sort_by_key(|p| (self.directory.region_of(*p).map(str::to_string) != here, *p));
        let mut failures = vec![];
        for p in peers.into_iter().take(MAX_PEERS_ASKED) {
            match self.ask_for_chunk(p, group, hash).await {
                Ok(data) if ::blake3::hash(&data).as_bytes() == &hash => return Ok(Fetched { from: p, data }),
                Ok(_) => failures.push(format!("node {p} sent bytes that do not match the chunk's blake3")),
                Err(e) => failures.push(format!("node {p}: {e}")),
            }
        }
        if failures.is_empty() {
            return Err(format!("{group} has no other member to ask"));
        }
        Err(failures.join("; "))
    }

    async fn ask_for_chunk(&self, to: NodeId, group: &str, hash: Hash) -> Result<Vec<u8>, String> {
        let env = Envelope {
            from_incarnation: self.store.incarnation(),
            body: Request::FetchChunk { group: group.to_string(), hash },
        };
        let reply = self
            .transport
            .call(to, Bytes::from(wire::encode(&env)), FETCH_CHUNK_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let reply = wire::decode::<ReplyEnvelope>(&reply).map_err(|e| e.to_string())?;
        self.peers.check(to, reply.from_incarnation)?;
        match reply.body {
            Reply::Chunk(data) => Ok(data),
            Reply::Error(e) => Err(e.to_string()),
            _ => Err("an unexpected kind of reply".into()),
        }
    }

    /// Answers a peer's [`Request::FetchChunk`] with this node's verified copy. Only a member of
    /// the group may ask (as this node knows the group), and only for a chunk of that tenant: one
    /// the group's catalog references, or (a new epoch this node has not caught up on yet) one
    /// that any epoch of the tenant whose rows this node holds references. So no tenant's bytes
    /// reach a node that is not one of its replicas. A damaged copy here is refused, not repaired
    /// on the way (the asker tries another member; this node's scrub repairs it).
    pub(super) async fn serve_chunk(&self, from: NodeId, group: &str, hash: &Hash) -> Reply {
        let Some(g) = self.hosted.get(group) else {
            return Reply::Error(WireError::UnknownGroup(group.to_string()));
        };
        if !self.group_members(group).await.contains(&from) {
            return Reply::Error(WireError::Refused(format!("node {from} is not a member of {group}")));
        }
        let (referenced, chunks) = {
            let sm = g.sm.read().await;
            // Scans of the catalog and the rows, but only on this rare path.
            (sm.state.catalog.segments.values().any(|r| r.chunks.contains(hash)), sm.state.chunks.clone())
        };
        let referenced = referenced
            || match group.rsplit_once('/') {
                Some((tenant, _epoch)) => {
                    let prefix = format!("{tenant}/");
                    blocking(|| rows_reference_chunk(&self.store, &prefix, hash)).unwrap_or_else(|e| {
                        tracing::warn!(%group, error = %e, "cannot read the tenant's rows; refusing a chunk request");
                        false
                    })
                }
                None => false,
            };
        if !referenced {
            return Reply::Error(WireError::Refused(format!("no epoch of {group} references chunk {}", hex(hash))));
        }
        match blocking(|| chunks.get(hash)) {
            Ok(data) => Reply::Chunk(data),
            Err(e) => Reply::Error(WireError::Failed(e.to_string())),
        }
    }

    /// One step of the scrub: checks the chunks of about [`SCRUB_STEP_BYTES`] of one group's
    /// segments, repairing damaged ones. Answers how long to wait before the next step.
    pub(super) async fn scrub_step(&self, scrub: &mut Scrub) -> Duration {
        let groups: Vec<String> = self.hosted.names();
        if groups.is_empty() {
            // Nothing hosted yet (a node starts its groups shortly after it starts): look again
            // soon rather than a whole pass later.
            *scrub = Scrub::default();
            return SCRUB_STEP_EVERY;
        }
        let Some((group, after)) = next_in_pass(&groups, &scrub.at) else {
            let Scrub { checked, repaired, unrepaired, .. } = std::mem::take(scrub);
            if repaired > 0 || unrepaired > 0 {
                tracing::warn!(node = %self.name(), checked, repaired, unrepaired, "chunk scrub pass complete");
            } else {
                tracing::debug!(node = %self.name(), checked, "chunk scrub pass complete; every chunk intact");
            }
            return SCRUB_PASS_EVERY;
        };
        let Some(g) = self.hosted.get(&group) else {
            scrub.at = ScrubPosition::After { group };
            return Duration::ZERO;
        };
        let (batch, chunks) = {
            let sm = g.sm.read().await;
            (sm.state.scrub_batch(after.as_deref(), SCRUB_STEP_BYTES), sm.state.chunks.clone())
        };
        for h in &batch.chunks {
            match chunks.check_or_repair(h).await {
                Ok(Checked::Intact) => {}
                Ok(Checked::Repaired { from }) => {
                    scrub.repaired += 1;
                    tracing::info!(node = %self.name(), %group, chunk = %hex(h), from, "scrub repaired a chunk");
                }
                Err(e) => {
                    scrub.unrepaired += 1;
                    tracing::error!(node = %self.name(), %group, chunk = %hex(h), error = %e, "scrub found a damaged chunk it cannot repair yet");
                }
            }
            scrub.checked += 1;
        }
        scrub.at = match batch.next {
            Some(last) => ScrubPosition::In { group, after: Some(last) },
            None => ScrubPosition::After { group },
        };
        SCRUB_STEP_EVERY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_pass_visits_every_group_in_order_and_skips_groups_that_went_away() {
        let gs = groups(&["t/a/1", "t/b/1", "t/c/2"]);
        assert_eq!(next_in_pass(&gs, &ScrubPosition::Start), Some(("t/a/1".into(), None)));
        let inside = ScrubPosition::In { group: "t/a/1".into(), after: Some("seg9".into()) };
        assert_eq!(next_in_pass(&gs, &inside), Some(("t/a/1".into(), Some("seg9".into()))));
        assert_eq!(next_in_pass(&gs, &ScrubPosition::After { group: "t/a/1".into() }), Some(("t/b/1".into(), None)));
        let gone = ScrubPosition::In { group: "t/b/0".into(), after: Some("seg1".into()) };
        assert_eq!(next_in_pass(&gs, &gone), Some(("t/b/1".into(), None)));
        assert_eq!(next_in_pass(&gs, &ScrubPosition::After { group: "t/c/2".into() }), None);
        assert_eq!(next_in_pass(&[], &ScrubPosition::Start), None);
    }
}
