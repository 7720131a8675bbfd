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
// Large only through `Entry` (a meta command's records): a record lives from its decoding to its
// inflation into an `Entry` of the same size, so boxing would add an allocation and save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Deserialize)]
pub(crate) enum Record {
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
pub(crate) fn decode_record(group: &str, bytes: &EntryBytes) -> Result<Record, StoreError> {
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

/// Chunks of one push by reference fetched at once by a replica that lacks them.
const HOLD_FETCHES_AT_ONCE: usize = 8;
/// Rounds of fetching a push by reference's missing chunks before the append fails, and the
/// pause after the first failed round (doubling): about 12 s of retries, beyond the fetches' own
/// timeouts. The leader sends the chunks before it proposes (`Writes::push_chunked`) and holds
/// them, so a replica fetching here is rare (it missed the upload), and one that cannot fetch at
/// all is cut off from every member that holds them.
const HOLD_ROUNDS: u32 = 6;
const HOLD_FIRST_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// Makes every chunk a push by reference names durable in `store` (fetching those it lacks from
/// the group's members, each verified against its hash and written durably), so that the entry
/// is queued, and later reported flushed, only on a replica that holds its bytes. Any other entry
/// needs nothing.
async fn hold_chunks(store: &ChunkStore, group: &str, e: &Entry) -> Result<(), io::Error> {
    use futures::StreamExt;
    let EntryPayload::Normal(Command::Tenant(TenantCommand::PutSegmentRef { name, chunks, .. })) = &e.payload else {
        return Ok(());
    };
    let mut missing: Vec<Hash> = blocking(|| {
        let mut seen = std::collections::BTreeSet::new();
        chunks.iter().filter(|h| seen.insert(**h) && !store.contains(h)).copied().collect()
    });
    let mut pause = HOLD_FIRST_PAUSE;
    for round in 1..=HOLD_ROUNDS {
        if missing.is_empty() {
            return Ok(());
        }
        let fetched: Vec<(Hash, Result<_, chunks::ChunkError>)> = futures::stream::iter(missing.clone())
            .map(|h| {
                let store = store.clone();
                async move { (h, store.fetch_missing(&h).await) }
            })
            .buffer_unordered(HOLD_FETCHES_AT_ONCE)
            .collect()
            .await;
        let mut last = None;
        missing = fetched
            .into_iter()
            .filter_map(|(h, r)| match r {
                Ok(_) => None,
                Err(err) => {
                    last = Some(format!("chunk {}: {err}", chunks::hex(&h)));
                    Some(h)
                }
            })
            .collect();
        if let Some(why) = last {
            if round == HOLD_ROUNDS {
                return Err(io::Error::other(format!(
                    "cannot append {name} (log index {}) to {group}: {} of its chunks are on no member that answered ({why})",
                    e.log_id.index,
                    missing.len()
                )));
            }
            tracing::warn!(%group, segment = %name, missing = missing.len(), %why, "fetching the chunks of an append; will retry");
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }
    Ok(())
}

fn lock(p: &Pending) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
    p.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl GroupLog {
    pub fn new(store: Arc<Store>, group: &str) -> Self {
        let chunks = ChunkStore::for_store(&store, group);
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
            // record without its bytes. A push by reference brings none: its chunks must be here
            // (durably) before it is queued.
            let side = match &self.chunks {
                Some(store) => {
                    hold_chunks(store, &self.group, &e).await?;
                    blocking(|| sideload(store, &e))?
                }
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
    pub command: Option<DurableCommand>,
}

/// A durable entry's command as its record holds it: whole, or a segment put whose bytes are in
/// the tenant's chunk files and are not read here.
#[derive(Clone, Debug)]
pub enum DurableCommand {
    Whole(Box<Command>),
    /// A stripped put: the chunks were verified against their hashes and made durable before the
    /// entry was reported flushed, and the record is stripped only when the bytes match the
    /// segment's claimed blake3 (`sideload`). Seeding applies it by reference; a chunk damaged since
    /// is the repair's to find, as for any chunk the catalog references.
    Sideloaded(SideloadedPut),
}

impl DurableCommand {
    /// A segment put's name, claimed blake3 and proposal time, whichever form it has.
    pub fn put(&self) -> Option<(&str, &Hash, u64)> {
        match self {
            DurableCommand::Whole(c) => match c.as_ref() {
                Command::Tenant(TenantCommand::PutSegment { name, blake3, proposed_at_ms, .. })
                | Command::Tenant(TenantCommand::PutSegmentRef { name, blake3, proposed_at_ms, .. }) => {
                    Some((name, blake3, *proposed_at_ms))
                }
                _ => None,
            },
            DurableCommand::Sideloaded(s) => Some((&s.name, &s.blake3, s.proposed_at_ms)),
        }
    }
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
/// sealed), so that what is read is what stays. Sideloaded segment puts come back by reference
/// ([`DurableCommand::Sideloaded`]): no chunk is read, so a damaged chunk never stops a sealed
/// replica from being inspected or seeding a promoted epoch, and memory does not grow with the
/// bytes of the tail.
pub fn read_durable_log(store: &Arc<Store>, group: &str) -> Result<DurableLog, StoreError> {
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
        let (log_id, command) = match decode_record(group, &bytes)? {
            Record::Whole(e) => match e.payload {
                EntryPayload::Normal(c) => (e.log_id, Some(DurableCommand::Whole(Box::new(c)))),
                _ => (e.log_id, None),
            },
            Record::Sideloaded(s) => (s.log_id, Some(DurableCommand::Sideloaded(s))),
        };
        last = Some((log_id.leader_id.term, log_id.index));
        unapplied.push(DurableEntry { term: log_id.leader_id.term, index: log_id.index, command });
    }
    Ok(DurableLog { last, applied: applied.map(|a| (a.leader_id.term, a.index)), unapplied })
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use super::*;
    use crate::seams::disk::{DiskEvent, DiskLog, DiskRef, OsDisk};
    use crate::storage::store::LOG_DIR;

    const TENANT_GROUP: &str = "t/acme/1";

    fn put(index: u64, data: Vec<u8>) -> Entry {
        let cmd = TenantCommand::PutSegment {
            name: format!("{index:024X}"),
            blake3: *::blake3::hash(&data).as_bytes(),
            data,
            proposed_at_ms: 1000 + index,
        };
        Entry { log_id: LogId::new(1u64.into(), index), payload: EntryPayload::Normal(Command::Tenant(cmd)) }
    }

    fn blank(index: u64) -> Entry {
        Entry { log_id: LogId::new(1u64.into(), index), payload: EntryPayload::Blank }
    }

    /// Distinct bytes per segment, so that no two share a chunk.
    fn segment(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    fn chunk_path(root: &Path, tenant: &str, h: &Hash) -> PathBuf {
        let x = chunks::hex(h);
        root.join("chunks").join(tenant).join(&x[..2]).join(x)
    }

    fn chunk_paths(root: &Path, data: &[u8]) -> Vec<PathBuf> {
        chunks::split(data).map(|c| chunk_path(root, "acme", ::blake3::hash(c).as_bytes())).collect()
    }

    type Rt = <TypeConfig as openraft::RaftTypeConfig>::AsyncRuntime;
    type Oneshot = <Rt as openraft_rt::AsyncRuntime>::Oneshot;

    #[allow(clippy::type_complexity)]
    fn oneshot() -> (
        <Oneshot as openraft_rt::Oneshot>::Sender<Result<(), io::Error>>,
        <Oneshot as openraft_rt::Oneshot>::Receiver<Result<(), io::Error>>,
    ) {
        <Oneshot as openraft_rt::Oneshot>::channel()
    }

    /// Appends `entries` and waits for openraft's flush callback; the result it reported.
    async fn append(log: &mut GroupLog, entries: Vec<Entry>) -> Result<(), io::Error> {
        let (tx, rx) = oneshot();
        log.append(entries, IOFlushed::signal(tx)).await?;
        rx.await.expect("the callback is always called")
    }

    async fn open(disk: DiskRef, root: &Path) -> Arc<Store> {
        if !disk.exists(&root.join(LOG_DIR)) {
            Store::init(disk.clone(), root, "n1", 7).unwrap();
        }
        Store::open(disk, root, "n1").unwrap()
    }

    /// Whether every chunk file in `chunks` was made durable (written to a temporary file that
    /// was fdatasync'd, renamed to its name, its directory fsync'd) before the first sync of a
    /// Raft log file, the sync after which the writer reports the append flushed.
    fn chunks_durable_before_the_log_sync(events: &[DiskEvent], chunks: &[PathBuf]) -> Result<(), String> {
        let in_log = |p: &Path| p.parent().is_some_and(|d| d.ends_with(LOG_DIR));
        let log_sync = events
            .iter()
            .position(|e| matches!(e, DiskEvent::Fdatasync(p) | DiskEvent::FsyncFile(p) if in_log(p)))
            .ok_or("the log file was never synced")?;
        for chunk in chunks {
            let renamed = events[..log_sync]
                .iter()
                .position(|e| matches!(e, DiskEvent::Rename { to, .. } if to == chunk))
                .ok_or_else(|| format!("{} was not renamed into place before the log sync", chunk.display()))?;
            let DiskEvent::Rename { from, .. } = &events[renamed] else { unreachable!() };
            if !events[..renamed].iter().any(|e| matches!(e, DiskEvent::Fdatasync(p) if p == from)) {
                return Err(format!("{} was not fdatasync'd before its rename", chunk.display()));
            }
            let dir = chunk.parent().expect("a chunk has a directory");
            if !events[renamed..log_sync].iter().any(|e| matches!(e, DiskEvent::FsyncDir(d) if d == dir)) {
                return Err(format!("the directory of {} was not fsync'd before the log sync", chunk.display()));
            }
        }
        Ok(())
    }

    async fn append_recorded(dir: &Path) -> (Result<(), String>, Vec<u8>) {
        let (disk, events): (OsDisk, DiskLog) = OsDisk::recording();
        let disk: DiskRef = Arc::new(disk);
        let store = open(disk, dir).await;
        let mut log = GroupLog::new(store, TENANT_GROUP);
        let data = segment(3, (2 << 20) + 100);
        events.take();
        append(&mut log, vec![put(1, data.clone())]).await.unwrap();
        (chunks_durable_before_the_log_sync(&events.take(), &chunk_paths(dir, &data)), data)
    }

    #[tokio::test]
    async fn the_append_is_reported_flushed_only_after_its_chunk_files_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let (order, data) = append_recorded(dir.path()).await;
        order.unwrap();
        for p in chunk_paths(dir.path(), &data) {
            assert!(p.exists(), "{}", p.display());
        }
    }

    /// The planted bug `ack-before-chunks` breaks exactly what the test above checks.
    #[cfg(feature = "planted-bugs")]
    #[tokio::test]
    async fn ack_before_chunks_is_caught_by_the_order_of_syncs() {
        use crate::planted::{plant, Bug};
        let dir = tempfile::tempdir().unwrap();
        plant(Some(Bug::AckBeforeChunks)).unwrap();
        let (order, _) = append_recorded(dir.path()).await;
        plant(None).unwrap();
        let err = order.expect_err("chunks written without a sync must be caught");
        assert!(err.contains("was not renamed into place") || err.contains("fdatasync"), "{err}");
    }

    #[tokio::test]
    async fn a_segment_is_written_once_as_chunks_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let disk: DiskRef = Arc::new(OsDisk::new());
        let store = open(disk.clone(), dir.path()).await;
        let mut log = GroupLog::new(store.clone(), TENANT_GROUP);
        let (a, b) = (segment(1, (1 << 20) + 5), segment(2, 4000));
        let entries = vec![blank(1), put(2, a.clone()), put(3, b.clone())];
        append(&mut log, entries.clone()).await.unwrap();

        // The log records hold references, not bytes.
        let records = store.raft_log().read(TENANT_GROUP, 1, 3).unwrap();
        assert_eq!(records.len(), 3);
        for (at, r) in &records {
            assert!(r.bytes().len() < 400, "record {at} holds {} bytes", r.bytes().len());
            assert!(!r.legacy());
        }
        for p in chunk_paths(dir.path(), &a).into_iter().chain(chunk_paths(dir.path(), &b)) {
            assert!(p.exists(), "{}", p.display());
        }
        assert_eq!(log.try_get_log_entries(1..=3).await.unwrap(), entries);
        assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(entries[2].log_id));
        let durable = read_durable_log(&store, TENANT_GROUP).unwrap();
        assert_eq!(durable.unapplied.len(), 3);
        let Some(DurableCommand::Sideloaded(s)) = &durable.unapplied[1].command else { panic!("{durable:?}") };
        let pieces: Vec<(Hash, u32)> =
            chunks::split(&a).map(|c| (*::blake3::hash(c).as_bytes(), c.len() as u32)).collect();
        assert_eq!(
            (s.name.as_str(), s.blake3, s.size, &s.chunks),
            (format!("{:024X}", 2).as_str(), *::blake3::hash(&a).as_bytes(), a.len() as u64, &pieces),
            "a sealed replica's durable log gives the put by reference"
        );

        // Truncation drops the records, never the chunk files.
        log.truncate_after(Some(entries[0].log_id)).await.unwrap();
        assert_eq!(log.try_get_log_entries(1..=3).await.unwrap(), vec![entries[0].clone()]);
        for p in chunk_paths(dir.path(), &a).into_iter().chain(chunk_paths(dir.path(), &b)) {
            assert!(p.exists(), "truncation removed {}", p.display());
        }
        // Nor does a purge; and a re-append of the same bytes finds the chunks present.
        append(&mut log, vec![put(2, a.clone())]).await.unwrap();
        log.purge(LogId::new(1u64.into(), 2)).await.unwrap();
        assert!(chunk_paths(dir.path(), &a).iter().all(|p| p.exists()));

        // The meta group has no chunk store: its entries stay whole.
        let mut meta = GroupLog::new(store.clone(), "meta");
        append(&mut meta, vec![blank(1)]).await.unwrap();
        assert_eq!(meta.try_get_log_entries(1..2).await.unwrap(), vec![blank(1)]);
    }

    /// A chunk that rotted in a sealed replica's unapplied tail neither stops the replica from
    /// being inspected nor from seeding the promoted epoch: the put is applied by reference and
    /// the chunk is left to the repair (sim seed 139, mixed, on a controller that promoted that
    /// replica: seeding retried forever while it inflated the tail from chunk files).
    #[tokio::test]
    async fn a_corrupt_chunk_in_the_tail_does_not_stop_seeding() {
        use crate::raft::state_machine::GroupState;
        use crate::tenant::group_state::TenantState;
        let dir = tempfile::tempdir().unwrap();
        let disk: DiskRef = Arc::new(OsDisk::new());
        let store = open(disk.clone(), dir.path()).await;
        let mut log = GroupLog::new(store.clone(), TENANT_GROUP);
        let (a, b) = (segment(7, (1 << 20) + 5), segment(8, 4000));
        append(&mut log, vec![blank(1), put(2, a.clone()), put(3, b.clone())]).await.unwrap();
        let rotten = chunk_paths(dir.path(), &b).remove(0);
        std::fs::write(&rotten, b"rot").unwrap();

        let sealed = crate::tenant::epoch::inspect(&store, TENANT_GROUP).unwrap();
        assert_eq!(sealed.mark().index, 3);
        assert_eq!(sealed.writes.len(), 2);
        let seeded = crate::tenant::epoch::seed(&store, TENANT_GROUP, "t/acme/2").await.unwrap();
        assert_eq!(seeded, 2, "both puts are applied (a blank entry carries nothing)");
        let state = TenantState::load(&store, "t/acme/2").unwrap();
        for (i, data) in [(2u64, &a), (3, &b)] {
            let rec = &state.catalog.segments[&format!("{i:024X}")];
            assert_eq!(
                (rec.blake3, rec.size, rec.term, rec.index),
                (*::blake3::hash(data).as_bytes(), data.len() as u64, 1, i)
            );
            let hashes: Vec<Hash> = chunks::split(data).map(|c| *::blake3::hash(c).as_bytes()).collect();
            assert_eq!(rec.chunks, hashes);
        }
        // The rotten file is as it was: seeding read no chunk (the repair finds it).
        assert_eq!(std::fs::read(&rotten).unwrap(), b"rot");
    }

    /// A replica that never received an entry of the old epoch can found an empty next epoch
    /// (`promotion::choose` when no survivor holds a log): inspecting and seeding find nothing.
    #[tokio::test]
    async fn a_replica_that_holds_nothing_seeds_an_empty_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(Arc::new(OsDisk::new()), dir.path()).await;
        let sealed = crate::tenant::epoch::inspect(&store, TENANT_GROUP).unwrap();
        assert_eq!((sealed.log.last, sealed.writes.len()), (None, 0));
        assert_eq!(crate::tenant::epoch::seed(&store, TENANT_GROUP, "t/acme/2").await.unwrap(), 0);
        assert!(store.kv_get("t/acme/2", "seeded-from").unwrap().is_some(), "the seed is recorded");
    }

    #[tokio::test]
    async fn a_segment_whose_bytes_do_not_match_its_hash_stays_in_the_log_and_out_of_the_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(Arc::new(OsDisk::new()), dir.path()).await;
        let mut log = GroupLog::new(store.clone(), TENANT_GROUP);
        let mut e = put(1, segment(9, 3000));
        if let EntryPayload::Normal(Command::Tenant(TenantCommand::PutSegment { blake3, .. })) = &mut e.payload {
            blake3[0] ^= 1;
        }
        append(&mut log, vec![e.clone()]).await.unwrap();
        assert!(!dir.path().join("chunks").join("acme").exists());
        assert_eq!(log.try_get_log_entries(1..2).await.unwrap(), vec![e]);
    }

    #[tokio::test]
    async fn a_damaged_chunk_is_an_error_naming_it_not_wrong_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(Arc::new(OsDisk::new()), dir.path()).await;
        let mut log = GroupLog::new(store.clone(), TENANT_GROUP);
        let data = segment(4, 5000);
        append(&mut log, vec![put(1, data.clone())]).await.unwrap();
        let path = &chunk_paths(dir.path(), &data)[0];
        let mut bytes = std::fs::read(path).unwrap();
        bytes[10] ^= 0x40;
        std::fs::write(path, bytes).unwrap();
        let err = log.try_get_log_entries(1..2).await.unwrap_err().to_string();
        assert!(err.contains("corrupt") && err.contains(&chunks::hex(::blake3::hash(&data).as_bytes())), "{err}");
        std::fs::remove_file(path).unwrap();
        let err = log.limited_get_log_entries(1, 2).await.unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
    }

    /// A peer holding healthy copies of chunks.
    struct Peer(ChunkStore);

    impl chunks::ChunkSource for Peer {
        fn fetch(&self, hash: Hash) -> futures::future::BoxFuture<'static, Result<chunks::Fetched, String>> {
            let got = self.0.get(&hash).map(|data| chunks::Fetched { from: 2, data }).map_err(|e| e.to_string());
            Box::pin(async move { got })
        }
    }

    #[tokio::test]
    async fn a_damaged_chunk_is_repaired_through_the_source_the_groups_state_was_given() {
        use crate::raft::state_machine::GroupState;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("n1");
        let store = open(Arc::new(OsDisk::new()), &root).await;
        let mut log = GroupLog::new(store.clone(), TENANT_GROUP);
        let data = segment(8, 7000);
        let e = put(1, data.clone());
        append(&mut log, vec![e.clone()]).await.unwrap();
        let path = &chunk_paths(&root, &data)[0];
        std::fs::write(path, b"rotten").unwrap();

        let peer = ChunkStore::for_tenant(Arc::new(OsDisk::new()), &dir.path().join("n2"), "acme");
        peer.put(&data).unwrap();
        // The node gives the group's state its peers (node/repair.rs); the log store shares them.
        let mut state = crate::tenant::group_state::TenantState::load(&store, TENANT_GROUP).unwrap();
        state.set_chunk_source(Arc::new(Peer(peer)));
        assert_eq!(log.try_get_log_entries(1..2).await.unwrap(), vec![e]);
        assert_eq!(std::fs::read(path).unwrap(), data, "the chunk file is whole again");
        // Another group of the tenant has its own source slot (a group repairs from its members).
        std::fs::write(path, b"rotten").unwrap();
        let other = ChunkStore::for_store(&store, "t/acme/2").unwrap();
        let h = *::blake3::hash(&data).as_bytes();
        assert!(matches!(other.get_or_repair(&h).await, Err(chunks::ChunkError::Unrepaired { .. })));
    }

    #[tokio::test]
    async fn appends_are_bounded_in_bytes_and_carry_at_least_one_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(Arc::new(OsDisk::new()), dir.path()).await;
        let mut log = GroupLog::new(store.clone(), TENANT_GROUP).with_max_append_bytes(5 << 20);
        let entries: Vec<Entry> = (1..=8).map(|i| put(i, segment(i as u8, 2 << 20))).collect();
        append(&mut log, entries.clone()).await.unwrap();
        // 2 MiB each: two fit in 5 MiB, a third does not.
        assert_eq!(log.limited_get_log_entries(1, 9).await.unwrap(), entries[..2].to_vec());
        assert_eq!(log.limited_get_log_entries(7, 9).await.unwrap(), entries[6..].to_vec());
        let mut tiny = log.clone().with_max_append_bytes(1);
        assert_eq!(tiny.limited_get_log_entries(3, 9).await.unwrap(), vec![entries[2].clone()], "always one entry");
        assert!(tiny.limited_get_log_entries(3, 3).await.unwrap().is_empty());
        // Entries still pending in memory are bounded the same way.
        let mut fresh = GroupLog::new(store.clone(), "t/acme/2").with_max_append_bytes(5 << 20);
        let (tx, _rx) = oneshot();
        fresh.append(entries.clone(), IOFlushed::signal(tx)).await.unwrap();
        assert_eq!(fresh.limited_get_log_entries(1, 9).await.unwrap(), entries[..2].to_vec());
        // Small entries are many to an append.
        let mut meta = GroupLog::new(store, "meta").with_max_append_bytes(1 << 20);
        let blanks: Vec<Entry> = (1..=100).map(blank).collect();
        append(&mut meta, blanks.clone()).await.unwrap();
        assert_eq!(meta.limited_get_log_entries(1, 101).await.unwrap(), blanks);
    }

    #[tokio::test]
    async fn a_log_written_by_the_previous_build_with_inline_bytes_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let disk: DiskRef = Arc::new(OsDisk::new());
        let data = segment(5, (1 << 20) + 77);
        let old = vec![blank(1), put(2, data.clone())];
        {
            let store = open(disk.clone(), dir.path()).await;
            // As the previous build wrote them: bare postcard entries, bytes inline.
            let rows: Vec<(u64, Vec<u8>)> =
                old.iter().map(|e| (e.log_id.index, postcard::to_stdvec(e).unwrap())).collect();
            store.raft_log().write_legacy_entries(TENANT_GROUP, &rows).unwrap();
        }
        tokio::task::yield_now().await;
        let store = open(disk, dir.path()).await;
        let mut log = GroupLog::new(store.clone(), TENANT_GROUP);
        assert_eq!(log.get_log_state().await.unwrap().last_log_id, Some(old[1].log_id));
        assert_eq!(log.try_get_log_entries(1..=2).await.unwrap(), old);
        assert_eq!(log.limited_get_log_entries(1, 3).await.unwrap(), old);
        assert_eq!(read_durable_log(&store, TENANT_GROUP).unwrap().unapplied.len(), 2);
        // New appends beside them are sideloaded; both forms read back in one range.
        let new = put(3, segment(6, 100));
        append(&mut log, vec![new.clone()]).await.unwrap();
        let mut all = old.clone();
        all.push(new);
        assert_eq!(log.try_get_log_entries(1..=3).await.unwrap(), all);
        assert!(store.raft_log().read(TENANT_GROUP, 2, 2).unwrap()[0].1.legacy());
        assert!(!store.raft_log().read(TENANT_GROUP, 3, 3).unwrap()[0].1.legacy());
    }

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
