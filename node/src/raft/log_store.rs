//! openraft's log storage for one group, over the node's shared [`Store`]: entries in the node's
//! Raft log files ([`crate::storage::raft_log`]), the vote and the purge marker in redb.
//!
//! Appends go through the store's writer, so they are fsync'd (and group-committed with other
//! groups' appends) before openraft is told the I/O completed: a follower answers an append only
//! after its entries are on stable storage.
//!
//! `append` does not wait for that commit, as openraft's contract asks: it queues the entries
//! with the writer, keeps them in memory (`pending`) so that they are readable at once, and
//! reports the flush through openraft's callback when the commit is durable. openraft meanwhile
//! goes on (a follower applies what it learned was committed, and that apply joins the same
//! store commit).
//!
//! **Sideloading** (CockroachDB's "sideloaded proposals"): a tenant `PutSegment` entry's bytes are
//! written once per replica, as the tenant's chunk files, when the entry is appended (on the
//! leader and on every follower and learner alike), and the log record keeps only their
//! references ([`SideloadedPut`]). The chunk files are durable (fdatasync'd, directory fsync'd)
//! before the record is even queued, and the flush is reported only once the record is durable,
//! so openraft never counts this replica (`matched`: commit quorum, lag gate, ack marks,
//! promotion) for an entry whose bytes it lacks. Reads inflate a stripped record from the chunk
//! files again (verified), so openraft, the state machine and the followers see whole entries.
//! Truncation and purge drop records only, never chunk files: a chunk may be shared with another
//! segment, another epoch or a snapshot, and only a reference-counting GC may remove one.
//!
//! Replication reads are bounded in bytes ([`RaftLogReader::limited_get_log_entries`]): one
//! append carries at most `max_append_bytes` of entries (at least one entry).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};

use super::types::{Command, Entry, LogId, TypeConfig, Vote};
use crate::storage::chunks::{self, ChunkStore, Hash};
use crate::storage::raft_log::{EntryBytes, LogOp};
use crate::storage::store::{blocking, Store, StoreError};
use crate::storage::versioned;
use crate::tenant::catalog::TenantCommand;

/// The default of `raft.max_append_bytes`: the most entry bytes one append carries.
pub const DEFAULT_MAX_APPEND_BYTES: u64 = 32 << 20;

/// Entries queued with the store's writer whose commit has not completed, by index.
type Pending = Arc<Mutex<BTreeMap<u64, Entry>>>;

/// One group's log, vote and purge marker.
#[derive(Clone)]
pub struct GroupLog {
    store: Arc<Store>,
    group: Arc<str>,
    /// Appended entries not yet committed by the writer: read from here until they are.
    pending: Pending,
    /// The tenant's chunk store, where segment bytes are sideloaded; `None` for the meta group.
    chunks: Option<ChunkStore>,
    /// The most entry bytes one replication read returns (at least one entry).
    max_append_bytes: u64,
}

/// A segment put whose bytes were sideloaded into the tenant's chunk files: what its log record
/// keeps in place of the bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideloadedPut {
    pub log_id: LogId,
    pub name: String,
    /// The segment's blake3, as the client sent it (append sideloads only a segment that has it).
    pub blake3: Hash,
    pub size: u64,
    /// Each chunk's blake3 and length, in segment order (`chunks::split`).
    pub chunks: Vec<(Hash, u32)>,
    pub proposed_at_ms: u64,
}

/// A log record of [`versioned::LOG_ENTRY_VERSION`] 1, as written.
#[derive(Serialize)]
enum RecordRef<'a> {
    Whole(&'a Entry),
    Sideloaded(&'a SideloadedPut),
}

/// A log record of [`versioned::LOG_ENTRY_VERSION`] 1, as read (same variants as [`RecordRef`]).
#[derive(Deserialize)]
enum Record {
    /// Any entry whose bytes (if any) are in the record itself: blank, membership, meta commands,
    /// and segment puts that were not sideloaded (empty, or whose bytes do not match their claimed
    /// blake3, which apply refuses).
    Whole(Entry),
    Sideloaded(SideloadedPut),
}

impl Record {
    /// About how many bytes the entry carries once inflated (what an append of it sends).
    fn inflated_bytes(&self, stored: usize) -> u64 {
        match self {
            Record::Whole(_) => stored as u64,
            Record::Sideloaded(s) => (stored as u64).saturating_add(s.size),
        }
    }
}

/// About how many bytes an in-memory entry carries in an append.
fn entry_bytes(e: &Entry) -> u64 {
    match &e.payload {
        EntryPayload::Normal(Command::Tenant(TenantCommand::PutSegment { name, data, .. })) => {
            (data.len() + name.len() + 128) as u64
        }
        // Blank, membership and meta entries are small: encoding one to measure it is cheap.
        _ => postcard::to_stdvec(e).map_or(1024, |b| b.len() as u64),
    }
}

/// Writes the chunks of a segment put durably into `store` and returns the references its log
/// record keeps; `None` for any other entry, which is stored whole. A chunk already present and
/// intact is not written again.
fn sideload(store: &ChunkStore, e: &Entry) -> Result<Option<SideloadedPut>, io::Error> {
    let EntryPayload::Normal(Command::Tenant(TenantCommand::PutSegment { name, blake3, data, proposed_at_ms })) =
        &e.payload
    else {
        return Ok(None);
    };
    if data.is_empty() {
        return Ok(None);
    }
    let mut refs = Vec::with_capacity(data.len().div_ceil(chunks::CHUNK_BYTES));
    for piece in chunks::split(data) {
        refs.push((*::blake3::hash(piece).as_bytes(), piece.len() as u32));
    }
    // A one-chunk segment's blake3 is its chunk's. A segment whose bytes do not match the claim is
    // refused by apply; keeping it whole keeps its bytes out of the chunk store.
    let actual = if refs.len() == 1 { refs[0].0 } else { *::blake3::hash(data).as_bytes() };
    if &actual != blake3 {
        return Ok(None);
    }
    for (piece, (h, _)) in chunks::split(data).zip(&refs) {
        store.put_verified(*h, piece).map_err(|err| io::Error::other(format!("sideloading {name}: {err}")))?;
    }
    Ok(Some(SideloadedPut {
        log_id: e.log_id,
        name: name.clone(),
        blake3: *blake3,
        size: data.len() as u64,
        chunks: refs,
        proposed_at_ms: *proposed_at_ms,
    }))
}

/// The entry of a stripped record, its bytes read back from the chunk files (each verified
/// against its blake3 by the chunk store).
fn inflated(s: SideloadedPut, pieces: Vec<Vec<u8>>) -> Result<Entry, StoreError> {
    let mut data = Vec::with_capacity(s.size as usize);
    for ((h, len), piece) in s.chunks.iter().zip(pieces) {
        if piece.len() != *len as usize {
            return Err(StoreError::Corrupt {
                what: format!("chunk {} of segment {}", chunks::hex(h), s.name),
                detail: format!("{} bytes where the log record says {len}", piece.len()),
            });
        }
        data.extend_from_slice(&piece);
    }
    if data.len() as u64 != s.size {
        return Err(StoreError::Corrupt {
            what: format!("segment {} at log index {}", s.name, s.log_id.index),
            detail: format!("its chunks hold {} bytes where the log record says {}", data.len(), s.size),
        });
    }
    let cmd = TenantCommand::PutSegment { name: s.name, blake3: s.blake3, data, proposed_at_ms: s.proposed_at_ms };
    Ok(Entry { log_id: s.log_id, payload: EntryPayload::Normal(Command::Tenant(cmd)) })
}

/// Decodes one log record, of this build's versioned form or the previous build's bare entry.
fn decode_record(group: &str, bytes: &EntryBytes) -> Result<Record, StoreError> {
    let what = format!("log entry of group {group}");
    if bytes.legacy() {
        let e = postcard::from_bytes(bytes.bytes()).map_err(|e| StoreError::Corrupt { what, detail: e.to_string() })?;
        return Ok(Record::Whole(e));
    }
    versioned::decode_log_entry(&what, bytes.bytes())
}

fn no_chunk_store(group: &str, s: &SideloadedPut) -> StoreError {
    StoreError::Corrupt {
        what: format!("log entry {} of group {group}", s.log_id.index),
        detail: "a sideloaded segment in a group that has no chunk store".into(),
    }
}

fn lock(p: &Pending) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
    p.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl GroupLog {
    pub fn new(store: Arc<Store>, group: &str) -> Self {
        let chunks = ChunkStore::for_group(store.disk().clone(), store.root(), group);
        Self { store, group: group.into(), pending: Arc::default(), chunks, max_append_bytes: DEFAULT_MAX_APPEND_BYTES }
    }

    /// Bounds replication reads to `bytes` of entries (`raft.max_append_bytes`).
    pub fn with_max_append_bytes(mut self, bytes: u64) -> Self {
        assert!(bytes > 0, "an append must be allowed some bytes");
        self.max_append_bytes = bytes;
        self
    }

    /// The entry of a record read back, inflated from the chunk files if it was sideloaded. A
    /// damaged chunk goes through the chunk store's repair path; without a source to repair
    /// from, the read fails with an error that names the chunk.
    async fn inflate(&self, r: Record) -> Result<Entry, io::Error> {
        match r {
            Record::Whole(e) => Ok(e),
            Record::Sideloaded(s) => {
                let Some(store) = &self.chunks else { return Err(no_chunk_store(&self.group, &s).into()) };
                let mut pieces = Vec::with_capacity(s.chunks.len());
                for (h, _) in &s.chunks {
                    let piece = store.get_or_repair(h).await.map_err(|e| {
                        io::Error::other(format!(
                            "reading back segment {} (log index {}) of group {}: {e}",
                            s.name, s.log_id.index, self.group
                        ))
                    })?;
                    pieces.push(piece);
                }
                Ok(inflated(s, pieces)?)
            }
        }
    }

    /// The record at `index` in the committed log, with its stored size.
    fn committed_record(&self, index: u64) -> Result<Option<(Record, usize)>, io::Error> {
        match self.store.raft_log().read(&self.group, index, index)?.pop() {
            None => Ok(None),
            Some((_, bytes)) => Ok(Some((decode_record(&self.group, &bytes)?, bytes.bytes().len()))),
        }
    }

    /// A value of [`versioned::RAFT_KV_KEYS`], in its versioned encoding.
    fn read_kv<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, io::Error> {
        match self.store.kv_get(&self.group, key)? {
            None => Ok(None),
            Some(b) => Ok(Some(versioned::decode_value(&format!("{key} of group {}", self.group), &b)?)),
        }
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, io::Error> {
        // Pending entries come after everything committed (truncation drops pending entries
        // from the truncation point on).
        if let Some((_, e)) = lock(&self.pending).last_key_value() {
            return Ok(Some(e.log_id));
        }
        let log = self.store.raft_log();
        let Some((_, last)) = log.bounds(&self.group) else { return Ok(None) };
        match log.read(&self.group, last, last)?.pop() {
            None => Ok(None),
            Some((_, bytes)) => Ok(Some(match decode_record(&self.group, &bytes)? {
                Record::Whole(e) => e.log_id,
                Record::Sideloaded(s) => s.log_id,
            })),
        }
    }
}

impl RaftLogReader<TypeConfig> for GroupLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        use std::ops::Bound;
        let lo = match range.start_bound() {
            Bound::Included(&x) => x,
            Bound::Excluded(&x) => x + 1,
            Bound::Unbounded => 0,
        };
        let hi = match range.end_bound() {
            Bound::Included(&x) => x,
            Bound::Excluded(&0) => return Ok(vec![]),
            Bound::Excluded(&x) => x - 1,
            Bound::Unbounded => u64::MAX,
        };
        if lo > hi {
            return Ok(vec![]);
        }
        // Pending entries in the range, taken first: a committed row at the same index is
        // older (it is being replaced after a truncation) or the same entry.
        let mut out: BTreeMap<u64, Entry> = lock(&self.pending).range(lo..=hi).map(|(i, e)| (*i, e.clone())).collect();
        let committed_hi = out.keys().next().map_or(hi, |first| first.saturating_sub(1).min(hi));
        if lo <= committed_hi && out.len() as u64 != hi.saturating_sub(lo).saturating_add(1) {
            for (at, bytes) in self.store.raft_log().read(&self.group, lo, committed_hi)? {
                if let std::collections::btree_map::Entry::Vacant(slot) = out.entry(at) {
                    let record = decode_record(&self.group, &bytes)?;
                    slot.insert(self.inflate(record).await?);
                }
            }
        }
        Ok(out.into_values().collect())
    }

    /// The entries from `start` on, below `end`, up to `max_append_bytes` of them (at least one):
    /// what openraft sends in one append. Stops early at a gap (purged meanwhile); openraft
    /// asks again from where this stopped.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, io::Error> {
        let mut out = vec![];
        let mut bytes = 0u64;
        for index in start..end {
            let pending = lock(&self.pending).get(&index).cloned();
            let (entry, size) = match pending {
                Some(e) => {
                    let size = entry_bytes(&e);
                    if !out.is_empty() && bytes.saturating_add(size) > self.max_append_bytes {
                        break;
                    }
                    (e, size)
                }
                None => {
                    let Some((record, stored)) = self.committed_record(index)? else { break };
                    // Sized before it is inflated: an entry that does not fit is not read back.
                    let size = record.inflated_bytes(stored);
                    if !out.is_empty() && bytes.saturating_add(size) > self.max_append_bytes {
                        break;
                    }
                    (self.inflate(record).await?, size)
                }
            };
            debug_assert_eq!(entry.log_id.index, index);
            bytes = bytes.saturating_add(size);
            out.push(entry);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.read_kv("vote")
    }
}

impl RaftLogStorage<TypeConfig> for GroupLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let purged: Option<LogId> = self.read_kv("purged")?;
        if let Some(p) = purged {
            // A purge whose marker became durable before the node stopped may not have reached
            // the log files: replay brought those entries back.
            self.store.raft_log().purge_upto(&self.group, p.index);
        }
        let last = self.last_entry_log_id()?.or(purged);
        Ok(LogState { last_purged_log_id: purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let bytes = versioned::encode_value(vote);
        self.store.write(vec![Store::kv_put(&self.group, "vote", bytes)]).await?;
        Ok(())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = vec![];
        let mut queued = vec![];
        for e in entries {
            // Segment bytes go to the tenant's chunk files first, durably; only their references
            // go to the log. The flush below is reported after the record commits, so after the
            // chunks are durable too: a crash in between leaves orphan chunk files, never a
            // record without its bytes.
            let side = match &self.chunks {
                Some(store) => blocking(|| sideload(store, &e))?,
                None => None,
            };
            let record = match &side {
                Some(s) => RecordRef::Sideloaded(s),
                None => RecordRef::Whole(&e),
            };
            rows.push((e.log_id.index, versioned::encode_log_entry(&record).map_err(io::Error::other)?));
            queued.push(e);
        }
        let ids: Vec<LogId> = queued.iter().map(|e| e.log_id).collect();
        let op = LogOp::Entries { group: self.group.clone(), entries: rows };
        {
            let mut pending = lock(&self.pending);
            for e in queued {
                pending.insert(e.log_id.index, e);
            }
        }
        // The callback fires only after the batch containing these entries is durable.
        #[cfg(feature = "planted-bugs")]
        let callback = crate::planted::report_before_sync(callback);
        #[cfg(not(feature = "planted-bugs"))]
        let callback = Some(callback);
        let pending = self.pending.clone();
        let group = self.group.clone();
        let then: crate::storage::store::ThenFn = Box::new(move |res| {
            // Committed (now readable from the store) or failed: either way no longer pending,
            // unless a later append has replaced the entry at that index.
            {
                let mut p = lock(&pending);
                for id in &ids {
                    if p.get(&id.index).map(|e| e.log_id) == Some(*id) {
                        p.remove(&id.index);
                    }
                }
            }
            if let Err(e) = &res {
                tracing::error!(group = %group, error = %e, "log append failed");
            }
            if let Some(callback) = callback {
                callback.io_completed(res.map_err(io::Error::from));
            }
        });
        self.store.log_write_then(vec![op], then).await;
        Ok(())
    }

    /// Drops log records only: the chunk files of truncated segment puts stay (they may be shared
    /// with other segments, epochs or snapshots; only a reference-counting GC removes chunks).
    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map(|l| l.index + 1).unwrap_or(0);
        // Queued appends at or past `from` still commit first (the writer keeps order); the
        // removal below, queued after them, deletes them again.
        lock(&self.pending).split_off(&from);
        self.store.log_write(vec![LogOp::TruncateFrom { group: self.group.clone(), from }]).await?;
        Ok(())
    }

    /// Drops log records only, never chunk files (see `truncate_after`).
    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let group = self.group.clone();
        let upto = log_id.index;
        // openraft purges only applied entries, which are flushed; drop any stale copy anyway.
        {
            let mut p = lock(&self.pending);
            let keep = p.split_off(&(upto + 1));
            *p = keep;
        }
        let marker = versioned::encode_value(&log_id);
        // The marker is durable before the entries are let go: a restart in between finds the
        // entries again in the files and drops them by the marker (`get_log_state`).
        self.store.write(vec![Store::kv_put(&group, "purged", marker)]).await?;
        self.store.raft_log().purge_upto(&group, upto);
        Ok(())
    }
}

/// Drops from the log index, for every group on the node, the entries its durable purge marker
/// covers. Replaying the log files brings back purged entries still in a file that was not
/// deleted yet; a running group drops them when openraft asks for its log state, but a group that
/// never runs again (a sealed epoch's) would otherwise keep them live and carried forward by the
/// log's compaction. Called once when the node opens its store.
pub fn apply_purge_markers(store: &Store) -> Result<usize, StoreError> {
    use redb::{ReadableDatabase, ReadableTable};
    let mut marks: Vec<(String, u64)> = vec![];
    {
        let txn = store.db().begin_read().map_err(StoreError::db)?;
        let kv = txn.open_table(crate::storage::store::KV).map_err(StoreError::db)?;
        for item in kv.iter().map_err(StoreError::db)? {
            let (k, v) = item.map_err(StoreError::db)?;
            let (group, key) = k.value();
            if key == "purged" {
                let id: LogId = versioned::decode_value(&format!("purged log id of {group}"), v.value())?;
                marks.push((group.to_string(), id.index));
            }
        }
    }
    for (group, upto) in &marks {
        store.raft_log().purge_upto(group, *upto);
    }
    Ok(marks.len())
}

/// One entry of a group's durable log, read without running the group.
#[derive(Clone, Debug)]
pub struct DurableEntry {
    pub term: u64,
    pub index: u64,
    /// The command, for a normal entry (blank and membership entries carry none).
    pub command: Option<super::types::Command>,
}

/// A stopped (sealed) group's durable log: where it ends and what it applied.
#[derive(Clone, Debug, Default)]
pub struct DurableLog {
    /// The last durable entry's (term, index), or the last purged one when the log is empty.
    pub last: Option<(u64, u64)>,
    /// The state machine's applied position.
    pub applied: Option<(u64, u64)>,
    /// Entries after the applied position, in order: durable, possibly never committed.
    pub unapplied: Vec<DurableEntry>,
}

/// Reads a group's durable log from the store. The group must not be running (its replica is
/// sealed), so that what is read is what stays. Sideloaded segments are read back from the chunk
/// files (verified; a damaged chunk is an error here, this path does not repair).
pub fn read_durable_log(store: &Arc<Store>, group: &str) -> Result<DurableLog, StoreError> {
    let chunk_store = ChunkStore::for_group(store.disk().clone(), store.root(), group);
    let decode = |bytes: &EntryBytes| -> Result<Entry, StoreError> {
        match decode_record(group, bytes)? {
            Record::Whole(e) => Ok(e),
            Record::Sideloaded(s) => {
                let Some(cs) = &chunk_store else { return Err(no_chunk_store(group, &s)) };
                let pieces = s
                    .chunks
                    .iter()
                    .map(|(h, _)| cs.get(h).map_err(|e| StoreError::Io(format!("segment {}: {e}", s.name))))
                    .collect::<Result<Vec<_>, _>>()?;
                inflated(s, pieces)
            }
        }
    };
    let applied: Option<LogId> = match store.kv_get(group, "applied")? {
        Some(b) => versioned::decode_value(&format!("applied log id of {group}"), &b)?,
        None => None,
    };
    // `purge` writes the marker as a bare log id (see `GroupLog::purge`).
    let purged: Option<LogId> = match store.kv_get(group, "purged")? {
        Some(b) => Some(versioned::decode_value(&format!("purged log id of {group}"), &b)?),
        None => None,
    };
    let from = applied.map(|a| a.index + 1).unwrap_or(0);
    let mut unapplied = vec![];
    let mut last = purged.map(|p| (p.leader_id.term, p.index));
    if let Some(a) = applied {
        last = last.max(Some((a.leader_id.term, a.index)));
    }
    for (_, bytes) in store.raft_log().read(group, from, u64::MAX)? {
        let e = decode(&bytes)?;
        last = Some((e.log_id.leader_id.term, e.log_id.index));
        let command = match e.payload {
            openraft::EntryPayload::Normal(c) => Some(c),
            _ => None,
        };
        unapplied.push(DurableEntry { term: e.log_id.leader_id.term, index: e.log_id.index, command });
    }
    Ok(DurableLog { last, applied: applied.map(|a| (a.leader_id.term, a.index)), unapplied })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::seams::disk::{DiskRef, OsDisk};

    #[tokio::test]
    async fn purge_markers_drop_replayed_entries_of_every_group_when_the_store_opens() {
        let dir = tempfile::tempdir().unwrap();
        let disk: DiskRef = Arc::new(OsDisk::new());
        Store::init(disk.clone(), dir.path(), "n1", 7).unwrap();
        let store = Store::open(disk.clone(), dir.path(), "n1").unwrap();
        let entries = (1..=10u64).map(|i| (i, vec![i as u8; 8])).collect();
        store.log_write(vec![LogOp::Entries { group: "t/sealed/1".into(), entries }]).await.unwrap();
        // The purge of a group that then stops for good (a sealed epoch): the marker is durable,
        // the entries are still in the log file.
        let marker = LogId::new(1u64.into(), 6);
        store.write(vec![Store::kv_put("t/sealed/1", "purged", versioned::encode_value(&marker))]).await.unwrap();
        drop(store);
        tokio::task::yield_now().await;
        let store = Store::open(disk, dir.path(), "n1").unwrap();
        assert_eq!(store.raft_log().bounds("t/sealed/1"), Some((1, 10)), "replay brings the purged entries back");
        assert_eq!(apply_purge_markers(&store).unwrap(), 1);
        assert_eq!(store.raft_log().bounds("t/sealed/1"), Some((7, 10)));
    }

    #[tokio::test]
    async fn a_store_written_before_values_were_versioned_opens_with_its_vote_and_purge_marker() {
        let dir = tempfile::tempdir().unwrap();
        let disk: DiskRef = Arc::new(OsDisk::new());
        Store::init(disk.clone(), dir.path(), "n1", 7).unwrap();
        let vote = Vote::new(3, 2);
        let marker = LogId::new(2u64.into(), 6);
        // As the previous build wrote them: bare postcard bytes, and no store format.
        Store::write_legacy_rows(
            &disk,
            dir.path(),
            &[
                ("g", "vote", postcard::to_stdvec(&vote).unwrap()),
                ("g", "purged", postcard::to_stdvec(&marker).unwrap()),
            ],
        );
        let store = Store::open(disk.clone(), dir.path(), "n1").unwrap();
        let mut log = GroupLog::new(store.clone(), "g");
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        assert_eq!(log.get_log_state().await.unwrap().last_purged_log_id, Some(marker));
        assert_eq!(read_durable_log(&store, "g").unwrap().last, Some((2, 6)));
        assert_eq!(apply_purge_markers(&store).unwrap(), 1);

        // New writes are in the versioned form, and read back after a reopen.
        let newer = Vote::new(4, 1);
        log.save_vote(&newer).await.unwrap();
        assert_eq!(store.kv_get("g", "vote").unwrap(), Some(versioned::encode_value(&newer)));
        drop((log, store));
        tokio::task::yield_now().await;
        let store = Store::open(disk, dir.path(), "n1").unwrap();
        assert_eq!(GroupLog::new(store, "g").read_vote().await.unwrap(), Some(newer));
    }
}
