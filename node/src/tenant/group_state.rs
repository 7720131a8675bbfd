//! A tenant's catalog as a Raft group's state: segment rows in the store, bytes in chunk files.
//!
//! A snapshot holds the catalog rows and the tenant's chunk table ([`ChunkRef`]: hash, size,
//! reference count, location), never chunk bytes ([`TenantSnapshot`]); a replica installs one only
//! once it holds every chunk the table lists ([`GroupState::ensure_referenced`] fetches the missing
//! ones from the group's members, one at a time). ARCHITECTURE.md, "Snapshots by reference".
//! It also says what the chunk scrub checks next ([`TenantState::scrub_batch`]).

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use futures::future::BoxFuture;

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use tetrad_core::records::{Change, RecordCounters, RecordRow, RecordTable};
use tetrad_core::LogPos;

use super::catalog::{decide_put, decide_put_by_ref, Catalog, PutDecision, SegmentRecord, TenantCommand, TenantReply};
use crate::raft::log_store::SideloadedPut;
use crate::raft::state_machine::{ApplyInfo, Check, Ensured, GroupState};
use crate::raft::{Command, Reply};
use crate::storage::chunks::{hex, ChunkError, ChunkSource, ChunkStore, Hash, CHUNK_BYTES};
use crate::storage::store::{Store, StoreError, TxnFn, RECORDS, SEGMENTS};
use crate::storage::versioned;

/// How many recent entries are remembered for lag accounting.
const RECENT_ENTRIES: usize = 100_000;

/// One applied entry, remembered for lag accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppliedMark {
    pub index: u64,
    pub proposed_at_ms: Option<u64>,
    /// Writes (segment puts and record changes) applied up to and including this entry.
    pub writes: u64,
    /// Segment bytes applied up to and including this entry.
    pub bytes: u64,
}

#[derive(Debug)]
pub struct TenantState {
    pub catalog: Catalog,
    /// The tenant's records (`tetrad_core::records`), rows in the store's RECORDS table and
    /// counters in the group's KV under [`RECORD_COUNTERS`].
    pub records: RecordTable,
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

/// Where a chunk of a snapshot's table lives. Only `Hot` (a chunk file on every replica) for
/// now; the tier issue adds warm, cold and archive, which an installer fetches differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkLocation {
    Hot,
}

/// One row of a snapshot's chunk table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub hash: Hash,
    pub size: u64,
    /// How many chunk references of the catalog's segments name it (a chunk shared by two
    /// segments, or twice by one, counts each time): what a reference-counting collector needs.
    pub refs: u64,
    pub location: ChunkLocation,
}

/// A tenant snapshot by reference: catalog rows and chunk table, no chunk bytes; the record
/// rows and their counters, whose values are small and bounded in total
/// (`tetrad_core::records::MAX_TABLE_BYTES`), inline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSnapshot {
    pub segments: Vec<SegmentRecord>,
    /// Sorted by hash, one row per distinct chunk the segments reference.
    pub chunks: Vec<ChunkRef>,
    /// In key order.
    pub records: Vec<RecordRow>,
    pub record_counters: RecordCounters,
}

/// A by-reference snapshot of format 2, before records: read as one without records.
#[derive(Deserialize)]
struct SnapshotV2 {
    segments: Vec<SegmentRecord>,
    chunks: Vec<ChunkRef>,
}

/// The group's KV key of its record counters ([`RecordCounters`]).
pub const RECORD_COUNTERS: &str = "record-counters";

/// A tenant snapshot as builds before snapshots by reference wrote it: every chunk's bytes.
/// Still installed (a snapshot file kept from that build, or a leader still running it).
#[derive(Serialize, Deserialize)]
pub(crate) struct LegacySnapshot {
    segments: Vec<SegmentRecord>,
    #[serde(with = "crate::storage::byte_buf::pairs")]
    chunks: Vec<(Hash, Vec<u8>)>,
}

/// The first bytes of a by-reference tenant snapshot, then [`SNAPSHOT_FORMAT`]. A legacy
/// snapshot is bare postcard, starting with its segment count; one with no segments has no
/// chunks and is exactly `[0, 0]`, so no legacy snapshot starts with a zero byte followed by
/// anything else: the two forms cannot be confused.
const SNAPSHOT_MAGIC: &[u8; 4] = b"\0TSR";
/// The by-reference format's version (the legacy form with bytes is version 1; version 2 is
/// by reference without records, still read).
pub const SNAPSHOT_FORMAT: u8 = 3;
const SNAPSHOT_FORMAT_V2: u8 = 2;

pub(crate) enum Decoded {
    ByRef(TenantSnapshot),
    Legacy(LegacySnapshot),
}

impl TenantSnapshot {
    /// The snapshot of `catalog`: its rows and the table of the chunks they reference, sizes
    /// derived from the segments' sizes (no chunk is read).
    pub fn of(catalog: &Catalog, records: &RecordTable) -> Self {
        let mut table: std::collections::BTreeMap<Hash, ChunkRef> = std::collections::BTreeMap::new();
        for rec in catalog.segments.values() {
            for (i, h) in rec.chunks.iter().enumerate() {
                let start = (i as u64).saturating_mul(CHUNK_BYTES as u64);
                let size = rec.size.saturating_sub(start).min(CHUNK_BYTES as u64);
                let row = table.entry(*h).or_insert(ChunkRef { hash: *h, size, refs: 0, location: ChunkLocation::Hot });
                row.refs += 1;
            }
        }
        TenantSnapshot {
            segments: catalog.segments.values().cloned().collect(),
            chunks: table.into_values().collect(),
            records: records.rows.values().cloned().collect(),
            record_counters: records.counters(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut head = SNAPSHOT_MAGIC.to_vec();
        head.push(SNAPSHOT_FORMAT);
        postcard::to_extend(self, head).expect("snapshot encodes")
    }

    /// Decodes and checks a by-reference snapshot: the table lists exactly the chunks the rows
    /// reference, once each, with their reference counts, so an install cannot be handed rows
    /// whose chunks it was not told to fetch.
    fn decode(body: &[u8], format: u8) -> Result<Self, StoreError> {
        let snap: TenantSnapshot = if format == SNAPSHOT_FORMAT_V2 {
            let v2: SnapshotV2 = postcard::from_bytes(body).map_err(|e| corrupt("tenant snapshot", e))?;
            TenantSnapshot {
                segments: v2.segments,
                chunks: v2.chunks,
                records: vec![],
                record_counters: RecordCounters::default(),
            }
        } else {
            postcard::from_bytes(body).map_err(|e| corrupt("tenant snapshot", e))?
        };
        // The records must make a table (sorted, unique, versions within the counter).
        if snap.records.windows(2).any(|w| w[0].key >= w[1].key) {
            return Err(corrupt("tenant snapshot", "its records are not in strict key order"));
        }
        RecordTable::from_rows(snap.records.iter().cloned(), snap.record_counters)
            .map_err(|e| corrupt("tenant snapshot", e))?;
        let mut want: std::collections::BTreeMap<Hash, u64> = std::collections::BTreeMap::new();
        for rec in &snap.segments {
            for h in &rec.chunks {
                *want.entry(*h).or_default() += 1;
            }
        }
        let have: Vec<(Hash, u64)> = snap.chunks.iter().map(|c| (c.hash, c.refs)).collect();
        if have != want.into_iter().collect::<Vec<_>>() {
            return Err(corrupt("tenant snapshot", "its chunk table does not match the chunks its segments reference"));
        }
        Ok(snap)
    }
}

pub(crate) fn decode_snapshot(bytes: &[u8]) -> Result<Decoded, StoreError> {
    match bytes.strip_prefix(SNAPSHOT_MAGIC.as_slice()) {
        Some([f @ (SNAPSHOT_FORMAT | SNAPSHOT_FORMAT_V2), body @ ..]) => {
            Ok(Decoded::ByRef(TenantSnapshot::decode(body, *f)?))
        }
        Some([found, ..]) => {
            Err(StoreError::UnknownVersion { what: "tenant snapshot".into(), found: *found, known: SNAPSHOT_FORMAT })
        }
        Some([]) => Err(corrupt("tenant snapshot", "no format after the magic")),
        None => postcard::from_bytes(bytes).map(Decoded::Legacy).map_err(|e| corrupt("tenant snapshot", e)),
    }
}

/// Makes every chunk of `table` present here, one at a time (memory: one chunk). `Exists` only
/// looks for the file; `Hash` also reads and verifies it, and repairs a damaged copy.
async fn ensure_chunks(chunks: ChunkStore, table: Vec<ChunkRef>, check: Check) -> Result<Ensured, String> {
    use crate::storage::store::blocking;
    let mut done = Ensured::default();
    for c in &table {
        let h = c.hash;
        let local = match check {
            Check::Exists if blocking(|| chunks.present(&h)) => Ok(()),
            Check::Exists => Err(ChunkError::Missing(hex(&h))),
            Check::Hash => blocking(|| chunks.get(&h)).map(drop),
        };
        match local {
            Ok(()) => done.present += 1,
            Err(ChunkError::Missing(_)) => {
                chunks.fetch_missing(&h).await.map_err(|e| e.to_string())?;
                done.fetched += 1;
            }
            Err(ChunkError::Corrupt(_)) => {
                chunks.check_or_repair(&h).await.map_err(|e| e.to_string())?;
                done.repaired += 1;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(done)
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
            bytes: self.catalog.bytes + self.records.bytes,
        });
        while self.recent.len() > RECENT_ENTRIES {
            self.recent.pop_front();
        }
    }

    /// Writes a segment's catalog row (in `work`) and counts it: the chunks are already durable.
    fn record(&mut self, group: &str, at: ApplyInfo, rec: SegmentRecord, work: &mut Vec<TxnFn>) -> TenantReply {
        let row = encode_row(&rec);
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

    /// Applies a sideloaded put by reference, reading no chunk: seeding a promoted epoch from a
    /// sealed replica's durable tail (`tenant/epoch.rs`). The chunks were made durable and
    /// verified on this replica before its entry was reported flushed; one missing or damaged
    /// since is left to the repair (reads and the scrub fetch it from a member that holds it),
    /// so it never keeps the tenant from failing over.
    pub fn apply_by_ref(&mut self, group: &str, at: ApplyInfo, put: &SideloadedPut, work: &mut Vec<TxnFn>) {
        let hashes: Vec<Hash> = put.chunks.iter().map(|(h, _)| *h).collect();
        let pos = tetrad_core::LogPos::new(at.term, at.index);
        match decide_put_by_ref(&self.catalog, &put.name, &put.blake3, put.size, &hashes, put.proposed_at_ms, pos) {
            PutDecision::Store(rec) => {
                if let Some(h) = hashes.iter().find(|h| !self.chunks.contains(h)) {
                    tracing::warn!(segment = %put.name, chunk = %hex(h), %group,
                        "a chunk of a seeded segment is absent here; reads and the scrub repair it from a member");
                }
                self.record(group, at, rec, work);
            }
            PutDecision::Reply(_) => {}
        }
        self.mark(at, Some(put.proposed_at_ms));
    }

    /// Applies a push by reference (`TenantCommand::PutSegmentRef`). Its chunks were made durable
    /// here before its entry was reported flushed (`raft/log_store.rs`), so nothing is read or
    /// written but the row; the claimed blake3 was checked over the chunks' bytes by the leader
    /// that proposed it (`Writes::push_chunked`), and each chunk's hash by every replica.
    #[allow(clippy::too_many_arguments)]
    fn apply_put_ref(
        &mut self,
        group: &str,
        at: ApplyInfo,
        name: &str,
        blake3: &Hash,
        size: u64,
        chunks: &[Hash],
        proposed_at_ms: u64,
        work: &mut Vec<TxnFn>,
    ) -> Reply {
        let pos = tetrad_core::LogPos::new(at.term, at.index);
        let reply = match crate::tenant::catalog::check_layout(size, chunks.len()) {
            Err(reason) => TenantReply::Invalid { reason },
            Ok(()) => match decide_put_by_ref(&self.catalog, name, blake3, size, chunks, proposed_at_ms, pos) {
                PutDecision::Reply(r) => r,
                PutDecision::Store(rec) => {
                    if let Some(h) = chunks.iter().find(|h| !self.chunks.contains(h)) {
                        tracing::warn!(segment = %name, chunk = %hex(h), %group,
                            "a chunk of a segment pushed by reference is absent here since its append; reads and the scrub repair it");
                    }
                    self.record(group, at, rec, work)
                }
            },
        };
        self.mark(at, Some(proposed_at_ms));
        Reply::Tenant(reply)
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

/// A catalog row as stored in the `segments` table: versioned ([`versioned::encode_value`]: a
/// version byte, then postcard), so a later change of `SegmentRecord` is read side by side with
/// this one. Stores written before rows were versioned are upgraded when they open
/// (`storage/store.rs`, store format 2).
pub fn encode_row(rec: &SegmentRecord) -> Vec<u8> {
    versioned::encode_value(rec)
}

/// Decodes a row written by [`encode_row`]; an unknown version or a damaged row is an error.
pub fn decode_row(bytes: &[u8]) -> Result<SegmentRecord, StoreError> {
    versioned::decode_value("segment record", bytes)
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
        let rec: SegmentRecord = decode_row(v.value())?;
        if rec.chunks.contains(h) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Encodes a record row for the RECORDS table, with the store's version byte.
pub fn encode_record(row: &RecordRow) -> Vec<u8> {
    versioned::encode_value(row)
}

pub fn decode_record(bytes: &[u8]) -> Result<RecordRow, StoreError> {
    versioned::decode_value("record row", bytes)
}

/// Reads the record table of `group`: its rows (none in a store made before records) and
/// counters, checked against each other.
fn load_records(store: &Store, txn: &redb::ReadTransaction, group: &str) -> Result<RecordTable, StoreError> {
    let mut rows = vec![];
    match txn.open_table(RECORDS) {
        Ok(t) => {
            for item in t.range((group, "")..).map_err(StoreError::db)? {
                let (k, v) = item.map_err(StoreError::db)?;
                if k.value().0 != group {
                    break;
                }
                rows.push(decode_record(v.value())?);
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(StoreError::db(e)),
    }
    let counters = match store.kv_get(group, RECORD_COUNTERS)? {
        Some(b) => versioned::decode_value("record counters", &b)?,
        None => RecordCounters::default(),
    };
    RecordTable::from_rows(rows, counters).map_err(|e| corrupt("record table", e))
}

/// Stages the replacement of `group`'s record rows and counters by `table`'s (a snapshot
/// install).
fn replace_records(group: &str, table: &RecordTable) -> TxnFn {
    let g = group.to_string();
    let rows: Vec<(String, Vec<u8>)> = table.rows.values().map(|r| (r.key.clone(), encode_record(r))).collect();
    let counters = versioned::encode_value(&table.counters());
    Box::new(move |txn| {
        let mut t = txn.open_table(RECORDS).map_err(StoreError::db)?;
        let mut old = vec![];
        for item in t.range((g.as_str(), "")..).map_err(StoreError::db)? {
            let (k, _) = item.map_err(StoreError::db)?;
            if k.value().0 != g {
                break;
            }
            old.push(k.value().1.to_string());
        }
        for k in old {
            t.remove((g.as_str(), k.as_str())).map_err(StoreError::db)?;
        }
        for (k, row) in &rows {
            t.insert((g.as_str(), k.as_str()), row.as_slice()).map_err(StoreError::db)?;
        }
        drop(t);
        Store::kv_put(&g, RECORD_COUNTERS, counters)(txn)
    })
}

impl TenantState {
    /// Applies a record write: the pure decision (`RecordTable::decide`) in the epoch of the
    /// group applying it (so a promoted epoch's changes version above every earlier epoch's),
    /// then its rows and counters staged in the same store commit as the entry's apply.
    fn apply_records(
        &mut self,
        group: &str,
        at: ApplyInfo,
        ops: &[tetrad_core::records::RecordOp],
        proposed_at_ms: u64,
        work: &mut Vec<TxnFn>,
    ) -> Reply {
        let epoch = tetrad_core::directory::parse_group(group).map_or(1, |(_, e)| e);
        // Planted `record-condition-ignored`: every condition is dropped before the decision.
        let unconditional: Vec<tetrad_core::records::RecordOp>;
        let ops = if crate::planted::on(crate::planted::Bug::RecordConditionIgnored) {
            use tetrad_core::records::RecordOp;
            unconditional = ops
                .iter()
                .map(|op| match op.clone() {
                    RecordOp::Put { key, value, .. } => RecordOp::Put { key, value, if_version: None },
                    RecordOp::Delete { key, .. } => RecordOp::Delete { key, if_version: None },
                })
                .collect();
            &unconditional[..]
        } else {
            ops
        };
        let d = self.records.decide(epoch, ops, proposed_at_ms, LogPos::new(at.term, at.index));
        if !d.changes.is_empty() {
            let g = group.to_string();
            let staged: Vec<(String, Option<Vec<u8>>)> = d
                .changes
                .iter()
                .map(|c| match c {
                    Change::Set(row) => (row.key.clone(), Some(encode_record(row))),
                    Change::Remove { key } => (key.clone(), None),
                })
                .collect();
            self.records.apply(&d.changes);
            self.writes += d.changes.len() as u64;
            let counters = versioned::encode_value(&self.records.counters());
            work.push(Box::new(move |txn| {
                let mut t = txn.open_table(RECORDS).map_err(StoreError::db)?;
                for (k, row) in &staged {
                    match row {
                        Some(row) => t.insert((g.as_str(), k.as_str()), row.as_slice()).map(drop),
                        None => t.remove((g.as_str(), k.as_str())).map(drop),
                    }
                    .map_err(StoreError::db)?;
                }
                drop(t);
                Store::kv_put(&g, RECORD_COUNTERS, counters)(txn)
            }));
        }
        self.mark(at, Some(proposed_at_ms));
        Reply::Tenant(TenantReply::Records(d.reply))
    }
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
            catalog.insert(decode_row(v.value())?);
        }
        drop(t);
        let records = load_records(store, &txn, group)?;
        let writes = catalog.segments.len() as u64 + records.writes;
        // The tenant's own chunk namespace, shared by all its epochs (and by its groups' log
        // stores, which sideload the bytes); the global directory of earlier builds is a fallback.
        let chunks =
            ChunkStore::for_store(store, group).unwrap_or_else(|| ChunkStore::new(store.disk().clone(), store.root()));
        Ok(TenantState { catalog, records, chunks, recent: VecDeque::new(), writes })
    }

    fn apply(
        &mut self,
        _store: &Arc<Store>,
        group: &str,
        at: ApplyInfo,
        cmd: &Command,
        work: &mut Vec<TxnFn>,
    ) -> Result<Reply, StoreError> {
        let (name, blake3, data, proposed_at_ms) = match cmd {
            Command::Tenant(TenantCommand::PutSegment { name, blake3, data, proposed_at_ms }) => {
                (name, blake3, data, proposed_at_ms)
            }
            Command::Tenant(TenantCommand::Records { ops, proposed_at_ms }) => {
                return Ok(self.apply_records(group, at, ops, *proposed_at_ms, work));
            }
            Command::Tenant(TenantCommand::PutSegmentRef { name, blake3, size, chunks, proposed_at_ms }) => {
                return Ok(self.apply_put_ref(group, at, name, blake3, *size, chunks, *proposed_at_ms, work));
            }
            _ => {
                self.mark(at, None);
                return Ok(Reply::None);
            }
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
                self.record(group, at, rec, work)
            }
        };
        self.mark(at, Some(*proposed_at_ms));
        Ok(Reply::Tenant(reply))
    }

    /// Copies the rows and derives the chunk table: no chunk is read.
    fn snapshot_bytes(&self, _store: &Arc<Store>) -> Result<Vec<u8>, StoreError> {
        Ok(TenantSnapshot::of(&self.catalog, &self.records).encode())
    }

    fn install(
        &mut self,
        _store: &Arc<Store>,
        group: &str,
        bytes: &[u8],
        work: &mut Vec<TxnFn>,
    ) -> Result<(), StoreError> {
        let (segments, records) = match decode_snapshot(bytes)? {
            // The installer made every chunk of the table durable here before this call
            // (`GroupSm::install_snapshot`).
            Decoded::ByRef(snap) => {
                let table = RecordTable::from_rows(snap.records, snap.record_counters)
                    .map_err(|e| corrupt("tenant snapshot", e))?;
                (snap.segments, table)
            }
            Decoded::Legacy(snap) => {
                for (h, data) in &snap.chunks {
                    if blake3::hash(data).as_bytes() != h {
                        return Err(corrupt("tenant snapshot", "a chunk's bytes do not match its hash"));
                    }
                    self.chunks.put(data).map_err(chunk_err)?;
                }
                (snap.segments, RecordTable::default())
            }
        };
        work.push(replace_records(group, &records));
        let mut catalog = Catalog::default();
        let mut rows = vec![];
        for rec in segments {
            rows.push((rec.name.clone(), encode_row(&rec)));
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
        self.writes = catalog.segments.len() as u64 + records.writes;
        self.catalog = catalog;
        self.records = records;
        self.recent.clear();
        Ok(())
    }

    fn note_applied(&mut self, at: ApplyInfo, proposed_at_ms: Option<u64>) {
        self.mark(at, proposed_at_ms);
    }

    /// A future that makes every chunk `bytes` (a snapshot) references present here. A legacy
    /// snapshot carries its chunks: nothing to fetch.
    fn ensure_referenced(&self, bytes: &[u8], check: Check) -> Option<BoxFuture<'static, Result<Ensured, String>>> {
        let table = match decode_snapshot(bytes) {
            Ok(Decoded::ByRef(snap)) => snap.chunks,
            Ok(Decoded::Legacy(_)) => return None,
            Err(e) => return Some(Box::pin(futures::future::ready(Err(e.to_string())))),
        };
        Some(Box::pin(ensure_chunks(self.chunks.clone(), table, check)))
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

    #[tokio::test]
    async fn catalog_rows_are_versioned_and_a_format_1_store_is_upgraded_when_it_opens() {
        let dir = tempfile::tempdir().unwrap();
        let disk: DiskRef = Arc::new(OsDisk::new());
        let root = dir.path().join("node");
        Store::init(disk.clone(), &root, "n1", 7).unwrap();
        let old = record("000000010000000000000001", 5, &[[7; 32]]);
        // As a format-1 build wrote it: the row's bare postcard bytes.
        Store::write_format1_catalog_rows(&disk, &root, &[(GROUP, &old.name, postcard::to_stdvec(&old).unwrap())]);
        let store = Store::open(disk.clone(), &root, "n1").unwrap();
        let st = TenantState::load(&store, GROUP).unwrap();
        assert_eq!(st.catalog.segments.get(&old.name), Some(&old), "the old row reads after the upgrade");
        let raw = {
            let txn = store.db().begin_read().unwrap();
            let t = txn.open_table(SEGMENTS).unwrap();
            let v = t.get((GROUP, old.name.as_str())).unwrap().unwrap().value().to_vec();
            v
        };
        assert_eq!(raw, encode_row(&old), "the row was rewritten with its version byte");
        assert_eq!(raw[0], versioned::KV_VERSION);
        // A row of an unknown version is an error that names it, never a misread.
        let mut newer = raw.clone();
        newer[0] = 9;
        let e = decode_row(&newer).unwrap_err();
        assert!(matches!(&e, StoreError::UnknownVersion { found: 9, .. }), "{e:?}");
        assert!(rows_reference_chunk(&store, "t/x/", &[7; 32]).unwrap());
        drop((st, store));
        tokio::task::yield_now().await;
        // Opening again changes nothing.
        let store = Store::open(disk, &root, "n1").unwrap();
        assert_eq!(TenantState::load(&store, GROUP).unwrap().catalog.segments.get(&old.name), Some(&old));
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
            records: RecordTable::default(),
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

    fn open_store(root: &std::path::Path) -> Arc<Store> {
        let disk: DiskRef = Arc::new(OsDisk::new());
        Store::init(disk.clone(), root, "n1", 7).unwrap();
        Store::open(disk, root, "n1").unwrap()
    }

    /// A replica at `root` holding `segments` (name, bytes), applied as the group would.
    async fn replica(root: &std::path::Path, segments: &[(&str, Vec<u8>)]) -> (Arc<Store>, TenantState) {
        let store = open_store(root);
        let mut st = TenantState::load(&store, GROUP).unwrap();
        for (i, (name, data)) in segments.iter().enumerate() {
            let cmd = Command::Tenant(TenantCommand::PutSegment {
                name: name.to_string(),
                blake3: *blake3::hash(data).as_bytes(),
                data: data.clone(),
                proposed_at_ms: 1,
            });
            let mut work = vec![];
            st.apply(&store, GROUP, ApplyInfo { term: 1, index: i as u64 + 1 }, &cmd, &mut work).unwrap();
            store.write(work).await.unwrap();
        }
        (store, st)
    }

    /// A peer that serves at most `budget` chunks, then fails (a deadline, a partition), and
    /// counts what it served.
    struct Counting {
        peer: ChunkStore,
        budget: std::sync::Mutex<u64>,
        served: std::sync::Mutex<u64>,
    }

    impl ChunkSource for Counting {
        fn fetch(&self, hash: Hash) -> BoxFuture<'static, Result<Fetched, String>> {
            let mut budget = self.budget.lock().unwrap();
            let got = if *budget == 0 {
                Err("the peer stopped answering".to_string())
            } else {
                *budget -= 1;
                *self.served.lock().unwrap() += 1;
                self.peer.get(&hash).map(|data| Fetched { from: 2, data }).map_err(|e| e.to_string())
            };
            Box::pin(async move { got })
        }
    }

    /// Two segments sharing a chunk: 2.5 MiB of distinct bytes in three distinct chunks.
    fn two_segments() -> Vec<(&'static str, Vec<u8>)> {
        let mut a: Vec<u8> = (0..CHUNK_BYTES * 2).map(|i| (i % 251) as u8).collect();
        a.extend_from_slice(b"tail of a");
        let mut b: Vec<u8> = a[..CHUNK_BYTES].to_vec();
        b.extend((0..CHUNK_BYTES / 2).map(|i| (i % 241) as u8));
        vec![("000000010000000000000001", a), ("000000010000000000000002", b)]
    }

    #[tokio::test]
    async fn a_snapshot_holds_rows_and_a_chunk_table_and_an_install_fetches_the_chunks_first() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, leader) = replica(&dir.path().join("leader"), &two_segments()).await;
        let bytes = leader.snapshot_bytes(&_store).unwrap();
        assert!(bytes.len() < 4096, "no chunk bytes in a snapshot: {} bytes", bytes.len());
        let Decoded::ByRef(snap) = decode_snapshot(&bytes).unwrap() else { panic!("not by reference") };
        assert_eq!(snap.segments.len(), 2);
        let seg_a = &leader.catalog.segments["000000010000000000000001"];
        let shared = seg_a.chunks[0];
        let mut sizes: Vec<(Hash, u64, u64)> = snap.chunks.iter().map(|c| (c.hash, c.size, c.refs)).collect();
        sizes.sort_by_key(|(_, size, refs)| (*size, *refs));
        assert_eq!(
            sizes.iter().map(|(_, s, r)| (*s, *r)).collect::<Vec<_>>(),
            vec![(9, 1), ((CHUNK_BYTES / 2) as u64, 1), (CHUNK_BYTES as u64, 1), (CHUNK_BYTES as u64, 2)]
        );
        assert_eq!(sizes[3].0, shared, "the chunk both segments begin with is referenced twice");
        assert!(snap.chunks.iter().all(|c| c.location == ChunkLocation::Hot));

        // A new member: nothing here. Its first attempt is cut short after one chunk (a
        // deadline); what it fetched stays and the next attempt fetches only the rest.
        let root = dir.path().join("learner");
        let store = open_store(&root);
        let mut st = TenantState::load(&store, GROUP).unwrap();
        let peer = Arc::new(Counting {
            peer: leader.chunks.clone(),
            budget: std::sync::Mutex::new(1),
            served: std::sync::Mutex::new(0),
        });
        st.set_chunk_source(peer.clone());
        let e = st.ensure_referenced(&bytes, Check::Hash).unwrap().await.unwrap_err();
        assert!(e.contains("the peer stopped answering"), "{e}");
        *peer.budget.lock().unwrap() = 100;
        let done = st.ensure_referenced(&bytes, Check::Hash).unwrap().await.unwrap();
        assert_eq!(done, Ensured { present: 1, fetched: 3, repaired: 0 });
        assert_eq!(*peer.served.lock().unwrap(), 4, "each of the four chunks crossed once");
        assert_eq!(st.chunks.repairs(), 0, "fetching a chunk never held is not a repair");
        let again = st.ensure_referenced(&bytes, Check::Exists).unwrap().await.unwrap();
        assert_eq!(again, Ensured { present: 4, ..Ensured::default() });

        let mut work = vec![];
        st.install(&store, GROUP, &bytes, &mut work).unwrap();
        store.write(work).await.unwrap();
        assert_eq!(st.catalog.segments, leader.catalog.segments);
        for (name, data) in two_segments() {
            let rec = &st.catalog.segments[name];
            let got: Vec<u8> = rec.chunks.iter().flat_map(|h| st.chunks.get(h).unwrap()).collect();
            assert_eq!(got, data, "{name} is whole on the new member");
        }
        let reloaded = TenantState::load(&store, GROUP).unwrap();
        assert_eq!(reloaded.catalog.segments, leader.catalog.segments, "the rows are durable");
    }

    #[tokio::test]
    async fn an_install_repairs_a_damaged_copy_and_a_build_fetches_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut st) =
            replica(&dir.path().join("node"), &[("000000010000000000000001", b"a WAL segment ".repeat(700))]).await;
        let h = st.catalog.segments["000000010000000000000001"].chunks[0];
        let x = hex(&h);
        let path = dir.path().join("node").join("chunks").join("x").join(&x[..2]).join(&x);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();

        let peer = ChunkStore::new(Arc::new(OsDisk::new()), &dir.path().join("peer"));
        peer.put(&b"a WAL segment ".repeat(700)).unwrap();
        st.set_chunk_source(Arc::new(Peer(peer)));
        let snap = st.snapshot_bytes(&store).unwrap();
        // A build looks at files only: the rot is the scrub's (and the installer's) to find.
        assert_eq!(
            st.ensure_referenced(&snap, Check::Exists).unwrap().await,
            Ok(Ensured { present: 1, ..Default::default() })
        );
        assert_eq!(
            st.ensure_referenced(&snap, Check::Hash).unwrap().await,
            Ok(Ensured { repaired: 1, ..Default::default() })
        );
        assert_eq!(st.chunks.repairs(), 1);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            st.ensure_referenced(&snap, Check::Exists).unwrap().await,
            Ok(Ensured { fetched: 1, ..Default::default() })
        );
        assert!(st.chunks.get(&h).is_ok());

        // Any epoch of the tenant that holds rows here vouches for the chunk; other tenants do not.
        assert!(rows_reference_chunk(&store, "t/x/", &h).unwrap());
        assert!(!rows_reference_chunk(&store, "t/xy/", &h).unwrap());
        assert!(!rows_reference_chunk(&store, "t/x/", &[7; 32]).unwrap());
    }

    #[tokio::test]
    async fn a_snapshot_with_bytes_from_the_previous_build_still_installs() {
        let dir = tempfile::tempdir().unwrap();
        let (_leader_store, leader) = replica(&dir.path().join("leader"), &two_segments()).await;
        // What `snapshot_bytes` wrote before snapshots by reference.
        let mut chunks = std::collections::BTreeMap::new();
        for rec in leader.catalog.segments.values() {
            for h in &rec.chunks {
                chunks.insert(*h, leader.chunks.get(h).unwrap());
            }
        }
        let legacy = postcard::to_stdvec(&LegacySnapshot {
            segments: leader.catalog.segments.values().cloned().collect(),
            chunks: chunks.into_iter().collect(),
        })
        .unwrap();
        assert!(legacy.len() > 2 * CHUNK_BYTES);
        let empty = postcard::to_stdvec(&LegacySnapshot { segments: vec![], chunks: vec![] }).unwrap();
        assert_eq!(empty, [0, 0], "why no legacy snapshot starts with the magic");

        let root = dir.path().join("member");
        let store = open_store(&root);
        let mut st = TenantState::load(&store, GROUP).unwrap();
        assert!(st.ensure_referenced(&legacy, Check::Hash).is_none(), "its chunks travel with it");
        let mut work = vec![];
        st.install(&store, GROUP, &legacy, &mut work).unwrap();
        store.write(work).await.unwrap();
        assert_eq!(st.catalog.segments, leader.catalog.segments);
        for rec in st.catalog.segments.values() {
            for h in &rec.chunks {
                assert!(st.chunks.get(h).is_ok());
            }
        }
        // A legacy empty snapshot installs as an empty catalog.
        let mut work = vec![];
        st.install(&store, GROUP, &empty, &mut work).unwrap();
        assert!(st.catalog.segments.is_empty());
    }

    #[test]
    fn a_snapshot_whose_table_misses_a_chunk_or_has_an_unknown_format_is_refused() {
        let mut catalog = Catalog::default();
        catalog.insert(record("a", 5, &[[1; 32], [2; 32]]));
        let mut snap = TenantSnapshot::of(&catalog, &RecordTable::default());
        snap.chunks.pop();
        let e = decode_snapshot(&snap.encode()).err().expect("refused");
        assert!(e.to_string().contains("chunk table does not match"), "{e}");
        let mut future = TenantSnapshot::of(&catalog, &RecordTable::default()).encode();
        future[4] = 9;
        assert!(matches!(decode_snapshot(&future), Err(StoreError::UnknownVersion { found: 9, .. })));
    }

    fn record_write(ops: Vec<tetrad_core::records::RecordOp>) -> Command {
        Command::Tenant(TenantCommand::Records { ops, proposed_at_ms: 3 })
    }

    fn rput(key: &str, value: &[u8], if_version: Option<u64>) -> tetrad_core::records::RecordOp {
        tetrad_core::records::RecordOp::Put { key: key.into(), value: value.to_vec(), if_version }
    }

    #[tokio::test]
    async fn records_persist_snapshot_and_install_with_their_counters() {
        use tetrad_core::records::{RecordOutcome, RecordReply};
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(&dir.path().join("a"));
        let mut st = TenantState::load(&store, GROUP).unwrap();
        let e1 = 1u64 << 40;
        let writes = [
            record_write(vec![rput("a/1", b"one", Some(0)), rput("a/2", b"two", None)]),
            record_write(vec![rput("a/1", b"uno", Some(e1))]),
            record_write(vec![tetrad_core::records::RecordOp::Delete { key: "a/2".into(), if_version: None }]),
            record_write(vec![rput("a/1", b"x", Some(e1))]),
        ];
        let mut replies = vec![];
        for (i, cmd) in writes.iter().enumerate() {
            let mut work = vec![];
            replies.push(st.apply(&store, GROUP, ApplyInfo { term: 1, index: i as u64 + 1 }, cmd, &mut work).unwrap());
            store.write(work).await.unwrap();
        }
        assert_eq!(
            replies[1],
            Reply::Tenant(TenantReply::Records(RecordReply::Done(vec![RecordOutcome::Put {
                key: "a/1".into(),
                version: e1 + 2,
                changed: true
            }])))
        );
        assert_eq!(
            replies[3],
            Reply::Tenant(TenantReply::Records(RecordReply::ConditionFailed {
                key: "a/1".into(),
                expected: e1,
                current: e1 + 2
            }))
        );
        // Four changes: two puts, an overwrite, a delete; the refused write changed nothing.
        assert_eq!((st.records.writes, st.writes, st.last_mark().unwrap().writes), (4, 4, 4));
        // The store holds what memory holds, counters included.
        let again = TenantState::load(&store, GROUP).unwrap();
        assert_eq!(again.records, st.records);
        assert_eq!(again.writes, 4);
        // A snapshot carries the rows and counters; another replica installs it and continues
        // the versions where this one left off.
        let bytes = st.snapshot_bytes(&store).unwrap();
        let other = open_store(&dir.path().join("b"));
        let mut o = TenantState::load(&other, GROUP).unwrap();
        let mut work = vec![];
        o.install(&other, GROUP, &bytes, &mut work).unwrap();
        other.write(work).await.unwrap();
        let o = TenantState::load(&other, GROUP).unwrap();
        assert_eq!(o.records, st.records);
        assert_eq!(o.writes, 4);
        // A by-reference snapshot of format 2 (before records) still reads, as one without records.
        let v2 = {
            #[derive(Serialize)]
            struct V2<'a> {
                segments: &'a [SegmentRecord],
                chunks: &'a [ChunkRef],
            }
            let mut b = SNAPSHOT_MAGIC.to_vec();
            b.push(2);
            postcard::to_extend(&V2 { segments: &[], chunks: &[] }, b).unwrap()
        };
        let Decoded::ByRef(snap) = decode_snapshot(&v2).unwrap() else { panic!("by reference") };
        assert!(snap.records.is_empty());
    }
}
