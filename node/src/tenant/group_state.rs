//! A tenant's catalog as a Raft group's state: segment rows in the store, bytes in chunk files.
//!
//! It also says what the chunk scrub checks next ([`TenantState::scrub_batch`]) and repairs
//! damaged chunks before a snapshot is built ([`GroupState::repair_for_snapshot`]).

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use futures::future::BoxFuture;

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::catalog::{decide_put, Catalog, PutDecision, SegmentRecord, TenantCommand, TenantReply};
use crate::raft::state_machine::{ApplyInfo, GroupState};
use crate::raft::{Command, Reply};
use crate::storage::chunks::{ChunkSource, ChunkStore, Hash};
use crate::storage::store::{Store, StoreError, TxnFn, SEGMENTS};

/// How many recent entries are remembered for lag accounting.
const RECENT_ENTRIES: usize = 100_000;

/// One applied entry, remembered for lag accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppliedMark {
    pub index: u64,
    pub proposed_at_ms: Option<u64>,
    /// Writes (segment puts) applied up to and including this entry.
    pub writes: u64,
    /// Segment bytes applied up to and including this entry.
    pub bytes: u64,
}

#[derive(Debug)]
pub struct TenantState {
    pub catalog: Catalog,
    pub chunks: ChunkStore,
    pub recent: VecDeque<AppliedMark>,
    writes: u64,
}

/// The next chunks the scrub checks: those of the segments after the cursor, in name order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScrubBatch {
    pub chunks: Vec<Hash>,
    /// The last segment covered: the cursor for the next batch. `None`: the pass is complete.
    pub next: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct TenantSnapshot {
    segments: Vec<SegmentRecord>,
    #[serde(with = "crate::storage::byte_buf::pairs")]
    chunks: Vec<(Hash, Vec<u8>)>,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { what: what.into(), detail: e.to_string() }
}

fn chunk_err(e: crate::storage::chunks::ChunkError) -> StoreError {
    StoreError::Io(e.to_string())
}

impl TenantState {
    fn mark(&mut self, at: ApplyInfo, proposed_at_ms: Option<u64>) {
        self.recent.push_back(AppliedMark {
            index: at.index,
            proposed_at_ms,
            writes: self.writes,
            bytes: self.catalog.bytes,
        });
        while self.recent.len() > RECENT_ENTRIES {
            self.recent.pop_front();
        }
    }

    /// The newest mark at or below `index`.
    pub fn mark_at(&self, index: u64) -> Option<AppliedMark> {
        let pos = self.recent.partition_point(|m| m.index <= index);
        if pos == 0 {
            None
        } else {
            Some(self.recent[pos - 1])
        }
    }

    /// The first mark above `index` that carries a proposal time.
    pub fn first_timed_after(&self, index: u64) -> Option<AppliedMark> {
        let pos = self.recent.partition_point(|m| m.index <= index);
        self.recent.iter().skip(pos).find(|m| m.proposed_at_ms.is_some()).copied()
    }

    pub fn last_mark(&self) -> Option<AppliedMark> {
        self.recent.back().copied()
    }

    /// Lets this replica repair damaged chunks from `source` (the group's other members).
    pub fn set_chunk_source(&mut self, source: Arc<dyn ChunkSource>) {
        self.chunks.set_source(source);
    }

    /// The chunks of the segments after `after` (all segments when `None`), whole segments at a
    /// time, until about `max_bytes` of segment bytes are covered (at least one segment). A
    /// chunk shared by two segments of the batch is listed once.
    pub fn scrub_batch(&self, after: Option<&str>, max_bytes: u64) -> ScrubBatch {
        use std::ops::Bound;
        let from = match after {
            Some(name) => Bound::Excluded(name.to_string()),
            None => Bound::Unbounded,
        };
        let mut seen = BTreeSet::new();
        let mut chunks = vec![];
        let mut bytes = 0u64;
        let mut last = None;
        let mut more = false;
        for (name, rec) in self.catalog.segments.range((from, Bound::Unbounded)) {
            if last.is_some() && bytes >= max_bytes {
                more = true;
                break;
            }
            chunks.extend(rec.chunks.iter().filter(|h| seen.insert(**h)).copied());
            bytes += rec.size;
            last = Some(name.clone());
        }
        ScrubBatch { chunks, next: if more { last } else { None } }
    }
}

/// Whether a segment row of any group whose name starts with `prefix` references chunk `h`. With
/// the prefix `t/<tenant>/` that is every epoch of one tenant this node holds rows of, sealed ones
/// included. It decodes every row of those groups: for the rare repair path only.
pub fn rows_reference_chunk(store: &Store, prefix: &str, h: &Hash) -> Result<bool, StoreError> {
    let txn = store.db().begin_read().map_err(StoreError::db)?;
    let t = txn.open_table(SEGMENTS).map_err(StoreError::db)?;
    for item in t.range((prefix, "")..).map_err(StoreError::db)? {
        let (k, v) = item.map_err(StoreError::db)?;
        if !k.value().0.starts_with(prefix) {
            break;
        }
        let rec: SegmentRecord = postcard::from_bytes(v.value()).map_err(|e| corrupt("segment record", e))?;
        if rec.chunks.contains(h) {
            return Ok(true);
        }
    }
    Ok(false)
}

impl GroupState for TenantState {
    fn load(store: &Arc<Store>, group: &str) -> Result<Self, StoreError> {
        let mut catalog = Catalog::default();
        let txn = store.db().begin_read().map_err(StoreError::db)?;
        let t = txn.open_table(SEGMENTS).map_err(StoreError::db)?;
        for item in t.range((group, "")..).map_err(StoreError::db)? {
            let (k, v) = item.map_err(StoreError::db)?;
            if k.value().0 != group {
                break;
            }
            let rec: SegmentRecord = postcard::from_bytes(v.value()).map_err(|e| corrupt("segment record", e))?;
            catalog.insert(rec);
        }
        let writes = catalog.segments.len() as u64;
        // The tenant's own chunk namespace, shared by all its epochs (and by its groups' log
        // stores, which sideload the bytes); the global directory of earlier builds is a fallback.
        let chunks =
            ChunkStore::for_store(store, group).unwrap_or_else(|| ChunkStore::new(store.disk().clone(), store.root()));
        Ok(TenantState { catalog, chunks, recent: VecDeque::new(), writes })
    }

    fn apply(
        &mut self,
        _store: &Arc<Store>,
        group: &str,
        at: ApplyInfo,
        cmd: &Command,
        work: &mut Vec<TxnFn>,
    ) -> Result<Reply, StoreError> {
        let Command::Tenant(TenantCommand::PutSegment { name, blake3, data, proposed_at_ms }) = cmd else {
            self.mark(at, None);
            return Ok(Reply::None);
        };
        let reply = match decide_put(&self.catalog, name, blake3, data, *proposed_at_ms, at.term, at.index) {
            PutDecision::Reply(r) => r,
            PutDecision::Store(rec) => {
                // `rec.chunks` holds the blake3 of each piece, just computed by `decide_put`.
                debug_assert_eq!(crate::storage::chunks::split(data).count(), rec.chunks.len());
                for (piece, h) in crate::storage::chunks::split(data).zip(&rec.chunks) {
                    // The log store wrote this chunk when it appended the entry (on this replica,
                    // before reporting the append flushed) and verified its bytes then, so its
                    // presence is enough: chunk files are written to a temporary name, fdatasync'd
                    // and renamed, so a chunk's name never exists without its whole bytes, and rot
                    // since then is the scrub's to find (every read verifies). Writing the bytes
                    // again would double the disk traffic sideloading exists to save. A chunk that
                    // is absent comes from an entry that was not sideloaded (appended by an
                    // earlier build, bytes inline): it is written here, as before.
                    if !self.chunks.contains(h) {
                        self.chunks.put_hashed(*h, piece).map_err(chunk_err)?;
                    }
                }
                let row = postcard::to_stdvec(&rec).expect("segment record encodes");
                let (g, n) = (group.to_string(), rec.name.clone());
                work.push(Box::new(move |txn| {
                    let mut t = txn.open_table(SEGMENTS).map_err(StoreError::db)?;
                    t.insert((g.as_str(), n.as_str()), row.as_slice()).map_err(StoreError::db)?;
                    Ok(())
                }));
                let r = TenantReply::Stored {
                    already_present: false,
                    size: rec.size,
                    blake3: rec.blake3,
                    index: at.index,
                    term: at.term,
                };
                self.catalog.insert(rec);
                self.writes += 1;
                r
            }
        };
        self.mark(at, Some(*proposed_at_ms));
        Ok(Reply::Tenant(reply))
    }

    fn snapshot_bytes(&self, _store: &Arc<Store>) -> Result<Vec<u8>, StoreError> {
        let mut chunks = std::collections::BTreeMap::new();
        for rec in self.catalog.segments.values() {
            for h in &rec.chunks {
                if !chunks.contains_key(h) {
                    chunks.insert(*h, self.chunks.get(h).map_err(chunk_err)?);
                }
            }
        }
        let snap = TenantSnapshot {
            segments: self.catalog.segments.values().cloned().collect(),
            chunks: chunks.into_iter().collect(),
        };
        Ok(postcard::to_stdvec(&snap).expect("snapshot encodes"))
    }

    fn install(
        &mut self,
        _store: &Arc<Store>,
        group: &str,
        bytes: &[u8],
        work: &mut Vec<TxnFn>,
    ) -> Result<(), StoreError> {
        let snap: TenantSnapshot = postcard::from_bytes(bytes).map_err(|e| corrupt("tenant snapshot", e))?;
        for (h, data) in &snap.chunks {
            if blake3::hash(data).as_bytes() != h {
                return Err(corrupt("tenant snapshot", "a chunk's bytes do not match its hash"));
            }
            self.chunks.put(data).map_err(chunk_err)?;
        }
        let mut catalog = Catalog::default();
        let mut rows = vec![];
        for rec in snap.segments {
            rows.push((rec.name.clone(), postcard::to_stdvec(&rec).expect("segment record encodes")));
            catalog.insert(rec);
        }
        let g = group.to_string();
        work.push(Box::new(move |txn| {
            let mut t = txn.open_table(SEGMENTS).map_err(StoreError::db)?;
            let mut old = vec![];
            for item in t.range((g.as_str(), "")..).map_err(StoreError::db)? {
                let (k, _) = item.map_err(StoreError::db)?;
                if k.value().0 != g {
                    break;
                }
                old.push(k.value().1.to_string());
            }
            for n in old {
                t.remove((g.as_str(), n.as_str())).map_err(StoreError::db)?;
            }
            for (n, row) in rows {
                t.insert((g.as_str(), n.as_str()), row.as_slice()).map_err(StoreError::db)?;
            }
            Ok(())
        }));
        self.writes = catalog.segments.len() as u64;
        self.catalog = catalog;
        self.recent.clear();
        Ok(())
    }

    fn note_applied(&mut self, at: ApplyInfo, proposed_at_ms: Option<u64>) {
        self.mark(at, proposed_at_ms);
    }

    /// Checks every chunk the catalog references and repairs the damaged ones from peers;
    /// stops at the first that cannot be repaired. Answers how many were repaired.
    fn repair_for_snapshot(&self) -> Option<BoxFuture<'static, Result<u64, String>>> {
        let wanted: BTreeSet<Hash> = self.catalog.segments.values().flat_map(|r| r.chunks.iter().copied()).collect();
        let chunks = self.chunks.clone();
        Some(Box::pin(async move {
            let mut repaired = 0;
            for h in &wanted {
                match chunks.check_or_repair(h).await {
                    Ok(crate::storage::chunks::Checked::Intact) => {}
                    Ok(crate::storage::chunks::Checked::Repaired { .. }) => repaired += 1,
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(repaired)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seams::disk::{DiskRef, OsDisk};
    use crate::storage::chunks::{hex, Fetched};
    use crate::tenant::catalog::TenantCommand;

    const GROUP: &str = "t/x/1";

    /// A peer holding healthy copies.
    struct Peer(ChunkStore);

    impl ChunkSource for Peer {
        fn fetch(&self, hash: Hash) -> BoxFuture<'static, Result<Fetched, String>> {
            let got = self.0.get(&hash).map(|data| Fetched { from: 2, data }).map_err(|e| e.to_string());
            Box::pin(async move { got })
        }
    }

    fn record(name: &str, size: u64, chunks: &[Hash]) -> SegmentRecord {
        SegmentRecord {
            name: name.into(),
            size,
            blake3: [0; 32],
            chunks: chunks.to_vec(),
            proposed_at_ms: 0,
            term: 1,
            index: 1,
        }
    }

    #[test]
    fn the_scrub_walks_the_catalog_in_bounded_batches_of_whole_segments() {
        let (h1, h2, h3) = ([1; 32], [2; 32], [3; 32]);
        let mut catalog = Catalog::default();
        catalog.insert(record("a", 5, &[h1]));
        catalog.insert(record("b", 5, &[h1, h2]));
        catalog.insert(record("c", 5, &[h3]));
        let st = TenantState {
            catalog,
            chunks: ChunkStore::new(Arc::new(OsDisk::new()), std::path::Path::new("/nonexistent")),
            recent: VecDeque::new(),
            writes: 3,
        };
        assert_eq!(st.scrub_batch(None, 6), ScrubBatch { chunks: vec![h1, h2], next: Some("b".into()) });
        assert_eq!(st.scrub_batch(Some("b"), 6), ScrubBatch { chunks: vec![h3], next: None });
        assert_eq!(st.scrub_batch(None, 0), ScrubBatch { chunks: vec![h1], next: Some("a".into()) });
        assert_eq!(st.scrub_batch(None, 1 << 20), ScrubBatch { chunks: vec![h1, h2, h3], next: None });
        assert_eq!(st.scrub_batch(Some("c"), 6), ScrubBatch { chunks: vec![], next: None });
    }

    #[tokio::test]
    async fn a_rotten_chunk_is_repaired_from_a_peer_and_the_snapshot_holds_the_healthy_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let disk: DiskRef = Arc::new(OsDisk::new());
        let root = dir.path().join("node");
        Store::init(disk.clone(), &root, "n1", 7).unwrap();
        let store = Store::open(disk, &root, "n1").unwrap();
        let mut st = TenantState::load(&store, GROUP).unwrap();
        let data = b"a WAL segment ".repeat(700);
        let name = "000000010000000000000001";
        let cmd = Command::Tenant(TenantCommand::PutSegment {
            name: name.into(),
            blake3: *blake3::hash(&data).as_bytes(),
            data: data.clone(),
            proposed_at_ms: 1,
        });
        let mut work = vec![];
        st.apply(&store, GROUP, ApplyInfo { term: 1, index: 1 }, &cmd, &mut work).unwrap();
        store.write(work).await.unwrap();
        let h = st.catalog.segments[name].chunks[0];

        let x = hex(&h);
        let path = root.join("chunks").join("x").join(&x[..2]).join(&x);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();
        let e = st.snapshot_bytes(&store).unwrap_err();
        assert!(e.to_string().contains("corrupt"), "{e}");

        let peer = ChunkStore::new(Arc::new(OsDisk::new()), &dir.path().join("peer"));
        peer.put(&data).unwrap();
        st.set_chunk_source(Arc::new(Peer(peer)));
        let repair = st.repair_for_snapshot().expect("a tenant can repair");
        assert_eq!(repair.await, Ok(1));

        let snap: TenantSnapshot = postcard::from_bytes(&st.snapshot_bytes(&store).unwrap()).unwrap();
        assert_eq!(snap.chunks, vec![(h, data)]);
        assert_eq!(st.chunks.repairs(), 1);
        assert_eq!(st.repair_for_snapshot().unwrap().await, Ok(0), "nothing left to repair");

        // Any epoch of the tenant that holds rows here vouches for the chunk; other tenants do not.
        assert!(rows_reference_chunk(&store, "t/x/", &h).unwrap());
        assert!(!rows_reference_chunk(&store, "t/xy/", &h).unwrap());
        assert!(!rows_reference_chunk(&store, "t/x/", &[7; 32]).unwrap());
    }
}
