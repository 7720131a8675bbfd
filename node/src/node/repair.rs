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
use crate::raft::wire::{self, Envelope, Reply, ReplyEnvelope, Request, VerifyCounts, WireError};
use crate::seams::net::{NodeId, TransportRef};
use crate::storage::chunks::{hex, Checked, ChunkError, ChunkSource, ChunkStore, Fetched, Hash};
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
/// Bounds of the segment bytes one verification batch covers (the asker's `max_bytes` is
/// clamped to them): big enough to make progress, small enough to answer within
/// [`VERIFY_BATCH_TIMEOUT`] even when every chunk of the batch needs a repair across a WAN.
pub(crate) const VERIFY_BATCH_MIN_BYTES: u64 = 1 << 20;
pub(crate) const VERIFY_BATCH_MAX_BYTES: u64 = 64 << 20;
/// How long a member may take to answer one verification batch (16 MiB of segments by default).
pub(crate) const VERIFY_BATCH_TIMEOUT: Duration = Duration::from_secs(30);
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

    /// One chunk request to `to` and its reply, from a peer of the expected incarnation.
    async fn chunk_call(&self, to: NodeId, body: Request) -> Result<Reply, String> {
        let env = Envelope { from_incarnation: self.store.incarnation(), body };
        let reply = self
            .transport
            .call(to, Bytes::from(wire::encode(&env)), FETCH_CHUNK_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let reply = wire::decode::<ReplyEnvelope>(&reply).map_err(|e| e.to_string())?;
        self.peers.check(to, reply.from_incarnation)?;
        Ok(reply.body)
    }

    async fn ask_for_chunk(&self, to: NodeId, group: &str, hash: Hash) -> Result<Vec<u8>, String> {
        match self.chunk_call(to, Request::FetchChunk { group: group.to_string(), hash }).await? {
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
        // A chunk in the tenant's own namespace is that tenant's bytes, referenced or not yet (a
        // push by reference's chunks are fetched by a member appending its entry, before any row
        // names them).
        let own = g.sm.read().await.state.chunks.clone();
        if let Ok(data) = blocking(|| own.get_own(hash)) {
            return Reply::Chunk(data);
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

    /// Answers a leader's [`Request::StoreChunk`]: writes the chunk durably into the tenant's
    /// namespace here, when both this node and the sender are members of `group` and the bytes
    /// match the hash. The group need not run here yet (a learner being added).
    pub(super) async fn store_chunk(&self, from: NodeId, group: &str, hash: Hash, data: Vec<u8>) -> Reply {
        let members = self.group_members(group).await;
        if !members.contains(&from) || !members.contains(&self.me) {
            return Reply::Error(WireError::Refused(format!("node {from} or this node is not a member of {group}")));
        }
        if ::blake3::hash(&data).as_bytes() != &hash {
            return Reply::Error(WireError::Refused(format!("bytes sent as chunk {} do not match it", hex(&hash))));
        }
        let Some(chunks) = ChunkStore::for_store(&self.store, group) else {
            return Reply::Error(WireError::UnknownGroup(group.to_string()));
        };
        match blocking(|| chunks.put_verified(hash, &data)) {
            Ok(_) => Reply::Stored,
            Err(e) => Reply::Error(WireError::Failed(e.to_string())),
        }
    }

    /// Sends chunk `hash` to member `to` of `group` ([`Request::StoreChunk`]) and waits until it
    /// is durable there.
    pub(crate) async fn send_chunk(&self, to: NodeId, group: &str, hash: Hash, data: &[u8]) -> Result<(), String> {
        let req = Request::StoreChunk { group: group.to_string(), hash, data: data.to_vec() };
        match self.chunk_call(to, req).await? {
            Reply::Stored => Ok(()),
            Reply::Error(e) => Err(e.to_string()),
            _ => Err("an unexpected kind of reply".into()),
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

/// Checks each chunk of `hashes` in `chunks`, repairing a missing or damaged one from the
/// store's repair source (the group's other members), and counts what it found: the batch of
/// one [`Request::VerifyChunks`]. A chunk that no member could supply is counted `unrepaired`,
/// never `repaired`.
pub(crate) async fn verify_chunks(chunks: &ChunkStore, group: &str, hashes: &[Hash]) -> VerifyCounts {
    let mut c = VerifyCounts::default();
    for h in hashes {
        c.checked += 1;
        match blocking(|| chunks.get(h)) {
            Ok(data) => {
                c.bytes += data.len() as u64;
                continue;
            }
            Err(ChunkError::Missing(_)) => c.missing += 1,
            Err(_) => c.damaged += 1,
        }
        match chunks.check_or_repair(h).await {
            // `Intact` here: a concurrent repair (the scrub, a read) rewrote it meanwhile.
            Ok(Checked::Repaired { .. } | Checked::Intact) => c.repaired += 1,
            Err(e) => {
                c.unrepaired += 1;
                tracing::error!(%group, chunk = %hex(h), error = %e, "verify found a damaged chunk it cannot repair");
            }
        }
    }
    c
}

impl Repair {
    /// Answers a [`Request::VerifyChunks`]: verifies the next batch of the chunks this
    /// replica's applied catalog of `group` references. Only a node registered in the cluster
    /// may ask (the answer holds counts, never bytes).
    pub(super) async fn serve_verify(&self, from: NodeId, group: &str, after: Option<String>, max_bytes: u64) -> Reply {
        if from != self.me && !self.directory.meta().sm.read().await.state.nodes.contains_key(&from) {
            return Reply::Error(WireError::Refused(format!("node {from} is not a node of this cluster")));
        }
        let Some(g) = self.hosted.get(group) else {
            return Reply::Error(WireError::UnknownGroup(group.to_string()));
        };
        let max_bytes = max_bytes.clamp(VERIFY_BATCH_MIN_BYTES, VERIFY_BATCH_MAX_BYTES);
        let (batch, chunks) = {
            let sm = g.sm.read().await;
            (sm.state.scrub_batch(after.as_deref(), max_bytes), sm.state.chunks.clone())
        };
        let counts = verify_chunks(&chunks, group, &batch.chunks).await;
        Reply::Verified { counts, next: batch.next }
    }

    /// One verification batch of `group` on `member` (this node answers its own directly):
    /// the counts and the cursor of the next batch. One retry after a failed call; an error
    /// after that means the member is unreachable (or does not host the group).
    pub(crate) async fn verify_batch_on(
        &self,
        member: NodeId,
        group: &str,
        after: Option<String>,
        max_bytes: u64,
    ) -> Result<(VerifyCounts, Option<String>), String> {
        let mut last = String::new();
        for _attempt in 0..2 {
            let reply = if member == self.me {
                self.serve_verify(member, group, after.clone(), max_bytes).await
            } else {
                match self.call_verify(member, group, after.clone(), max_bytes).await {
                    Ok(r) => r,
                    Err(e) => {
                        last = e;
                        continue;
                    }
                }
            };
            match reply {
                Reply::Verified { counts, next } => return Ok((counts, next)),
                Reply::Error(e) => last = e.to_string(),
                _ => last = "an unexpected kind of reply".into(),
            }
        }
        Err(last)
    }

    async fn call_verify(
        &self,
        to: NodeId,
        group: &str,
        after: Option<String>,
        max_bytes: u64,
    ) -> Result<Reply, String> {
        let env = Envelope {
            from_incarnation: self.store.incarnation(),
            body: Request::VerifyChunks { group: group.to_string(), after, max_bytes },
        };
        let reply = self
            .transport
            .call(to, Bytes::from(wire::encode(&env)), VERIFY_BATCH_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let reply = wire::decode::<ReplyEnvelope>(&reply).map_err(|e| e.to_string())?;
        self.peers.check(to, reply.from_incarnation)?;
        Ok(reply.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seams::disk::OsDisk;

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

    /// A peer that holds its own copies.
    struct Peer(ChunkStore);

    impl ChunkSource for Peer {
        fn fetch(&self, hash: Hash) -> BoxFuture<'static, Result<Fetched, String>> {
            let got = self.0.get(&hash).map(|data| Fetched { from: 2, data }).map_err(|e| e.to_string());
            Box::pin(async move { got })
        }
    }

    fn chunk_path(root: &std::path::Path, h: &Hash) -> std::path::PathBuf {
        let x = hex(h);
        root.join("chunks").join(&x[..2]).join(&x)
    }

    #[tokio::test]
    async fn a_batch_counts_intact_missing_damaged_repaired_and_unrepaired_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let (mine_root, peer_root) = (dir.path().join("mine"), dir.path().join("peer"));
        let mut mine = ChunkStore::new(Arc::new(OsDisk::new()), &mine_root);
        let peer = ChunkStore::new(Arc::new(OsDisk::new()), &peer_root);
        let data: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 1000 + i as usize]).collect();
        let hashes: Vec<Hash> = data.iter().map(|d| mine.put(d).unwrap()).collect();
        for d in &data[..4] {
            peer.put(d).unwrap();
        }
        let path = |h: &Hash| chunk_path(&mine_root, h);
        assert!(path(&hashes[0]).exists(), "the test knows where chunks live");
        // 0 and 1 intact; 2 deleted; 3 flipped; 4 flipped and the peer lacks it.
        std::fs::remove_file(path(&hashes[2])).unwrap();
        for h in [&hashes[3], &hashes[4]] {
            let mut b = std::fs::read(path(h)).unwrap();
            b[10] ^= 1;
            std::fs::write(path(h), b).unwrap();
        }

        // Without a repair source nothing is repaired, and it says so.
        let c = verify_chunks(&mine, "t/a/1", &hashes).await;
        let want = VerifyCounts { checked: 5, bytes: 1000 + 1001, missing: 1, damaged: 2, repaired: 0, unrepaired: 3 };
        assert_eq!(c, want);

        mine.set_source(Arc::new(Peer(peer)));
        let c = verify_chunks(&mine, "t/a/1", &hashes).await;
        let want = VerifyCounts { checked: 5, bytes: 1000 + 1001, missing: 1, damaged: 2, repaired: 2, unrepaired: 1 };
        assert_eq!(c, want);
        assert_eq!(mine.get(&hashes[2]).unwrap(), data[2], "the deleted chunk is back");
        assert_eq!(mine.get(&hashes[3]).unwrap(), data[3], "the flipped chunk is whole again");

        // A second pass finds only the chunk no one could repair.
        let c = verify_chunks(&mine, "t/a/1", &hashes).await;
        let want = VerifyCounts {
            checked: 5,
            bytes: 1000 + 1001 + 1002 + 1003,
            missing: 0,
            damaged: 1,
            repaired: 0,
            unrepaired: 1,
        };
        assert_eq!(c, want);
        assert_eq!(c.missing + c.damaged, c.repaired + c.unrepaired);
    }
}
