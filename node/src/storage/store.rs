//! The node's store: its Raft log files ([`RaftLog`]), its redb database, and the single writer
//! that serves both (group commit).
//!
//! redb admits one write transaction at a time, and the log files one append. Rather than let
//! every group block on those, all writes of all groups on a node go to one writer task, which
//! drains whatever is queued into one batch: the batch's log records go out in one append and
//! one fdatasync, then its redb work in one transaction (`Durability::Immediate`, one fdatasync,
//! when any job in it must be durable): group commit across a node's groups. Callers await their
//! job's completion, so a write is reported durable only after the sync that contains it returned.
//!
//! The log is written before the database in every batch, so redb's applied state, which is
//! derived from log entries appended earlier, is never on disk ahead of the log it came from.
//!
//! The store also carries the node's storage identity: an incarnation id created with the store.
//! A wiped node has no store; `Store::open` refuses it and `Store::init` gives it a new
//! incarnation, under which it can only rejoin as a new member.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::raft_log::{LogOp, RaftLog};
use super::versioned::{self, RAFT_KV_KEYS, STORE_FORMAT};
use crate::seams::disk::{DiskRef, RedbFile};

/// Where Raft log entries lived before they moved to [`RaftLog`]'s files: (group, index) ->
/// encoded entry. Only read, to move a store written by an older version ([`Store::open`]).
const LEGACY_LOG: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("log");
/// Small per-group values: (group, key) -> bytes (vote, purged id, applied state, ...).
pub const KV: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("kv");
/// Tenant catalogs: (group, segment name) -> encoded segment record.
pub const SEGMENTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("segments");
/// Tenant records: (group, key) -> encoded record row (`tetrad_core::records::RecordRow`). Absent
/// in stores made before records; read as empty then, created by the first write.
pub const RECORDS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("records");

const NODE_GROUP: &str = "node";
/// (node, `format`): the store's format ([`STORE_FORMAT`]); see [`super::versioned`].
const FORMAT_KEY: &str = "format";
const DB_FILE: &str = "tetrad.redb";
/// The Raft log files' directory, under the data directory.
pub const LOG_DIR: &str = "raftlog";

/// How a store is opened.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// A Raft log file rolls over to a new one at this size.
    pub log_file_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { log_file_bytes: 64 << 20 }
    }
}
/// Most jobs folded into one transaction.
const MAX_BATCH_JOBS: usize = 512;
/// Writer queue depth: callers wait (back pressure) beyond it.
const WRITER_QUEUE: usize = 4096;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("data directory {0} holds no tetrad store: the node was never initialised, or its disk was wiped. A wiped node must not rejoin under its old identity; initialise it as a new member (`tetrad init`) and re-add it")]
    Missing(PathBuf),
    #[error("data directory {0} already holds a tetrad store (node {1}); refusing to overwrite it")]
    AlreadyInitialised(PathBuf, String),
    #[error("store belongs to node {found:?}, but this config says {expected:?}")]
    WrongNode { expected: String, found: String },
    #[error("disk I/O failed: {0}")]
    Io(String),
    #[error("database error: {0}")]
    Db(String),
    #[error("corrupt record in {what}: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("the store's writer has stopped")]
    WriterGone,
    #[error("{what} is in encoding version {found}, but this build reads only version {known}: was the store written by a newer tetrad?")]
    UnknownVersion { what: String, found: u8, known: u8 },
}

impl StoreError {
    pub fn db(e: impl std::fmt::Display) -> Self {
        StoreError::Db(e.to_string())
    }
}

impl From<StoreError> for std::io::Error {
    fn from(e: StoreError) -> Self {
        std::io::Error::other(e.to_string())
    }
}

/// Work for the writer: a closure run inside the batch's write transaction.
pub type TxnFn = Box<dyn FnOnce(&WriteTransaction) -> Result<(), StoreError> + Send>;

/// Called by the writer with the outcome of the commit that carried a job.
pub type ThenFn = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

struct WriteJob {
    /// Raft log records, appended before the redb work of the batch runs.
    log: Vec<LogOp>,
    work: Vec<TxnFn>,
    /// Whether the caller needs the work on stable storage before it is told it is done.
    durable: bool,
    done: Done,
}

enum Done {
    /// A caller awaits the outcome.
    Wait(oneshot::Sender<Result<(), StoreError>>),
    /// The writer hands the outcome to a callback (the caller went on at once).
    Then(ThenFn),
}

impl Done {
    fn send(self, result: Result<(), StoreError>) {
        match self {
            // A caller that went away no longer needs the answer.
            Done::Wait(tx) => drop(tx.send(result)),
            Done::Then(f) => f(result),
        }
    }
}

/// Runs blocking storage work: directly on a current-thread runtime (the simulator, whose disk is
/// memory), inside `block_in_place` on a multi-threaded one (production), so other tasks keep
/// running while redb waits for fdatasync.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// A node's open store.
pub struct Store {
    db: Arc<redb::Database>,
    log: Arc<RaftLog>,
    writer: mpsc::Sender<WriteJob>,
    disk: DiskRef,
    root: PathBuf,
    node_name: String,
    incarnation: u64,
    /// Each group's chunk repair source, shared by the chunk stores its state and its log store
    /// build (`ChunkStore::for_store`; set by `node/repair.rs`).
    chunk_sources: std::sync::Mutex<std::collections::BTreeMap<String, super::chunks::SourceSlot>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).field("incarnation", &self.incarnation).finish()
    }
}

impl Store {
    /// Creates a new store with a fresh incarnation id. Refuses if one exists.
    pub fn init(disk: DiskRef, root: &Path, node_name: &str, incarnation: u64) -> Result<(), StoreError> {
        let file = root.join(DB_FILE);
        if disk.exists(&file) {
            let found = Self::read_identity(&disk, root).map(|(n, _)| n).unwrap_or_else(|_| "?".into());
            return Err(StoreError::AlreadyInitialised(root.to_path_buf(), found));
        }
        disk.create_dir_all(root).map_err(|e| StoreError::Io(format!("create {}: {e}", root.display())))?;
        let db = Self::open_db(&disk, &file)?;
        let mut txn = db.begin_write().map_err(StoreError::db)?;
        txn.set_durability(redb::Durability::Immediate).map_err(StoreError::db)?;
        {
            let mut kv = txn.open_table(KV).map_err(StoreError::db)?;
            kv.insert((NODE_GROUP, "name"), node_name.as_bytes()).map_err(StoreError::db)?;
            kv.insert((NODE_GROUP, "incarnation"), incarnation.to_be_bytes().as_slice()).map_err(StoreError::db)?;
            kv.insert((NODE_GROUP, FORMAT_KEY), [STORE_FORMAT].as_slice()).map_err(StoreError::db)?;
            txn.open_table(SEGMENTS).map_err(StoreError::db)?;
            txn.open_table(RECORDS).map_err(StoreError::db)?;
        }
        txn.commit().map_err(StoreError::db)?;
        Ok(())
    }

    fn open_db(disk: &DiskRef, file: &Path) -> Result<redb::Database, StoreError> {
        let backend = disk.open_backend(file).map_err(|e| StoreError::Io(format!("open {}: {e}", file.display())))?;
        redb::Database::builder().create_with_backend(RedbFile(backend)).map_err(StoreError::db)
    }

    fn read_identity(disk: &DiskRef, root: &Path) -> Result<(String, u64), StoreError> {
        let db = Self::open_db(disk, &root.join(DB_FILE))?;
        Self::identity_of(&db)
    }

    fn identity_of(db: &redb::Database) -> Result<(String, u64), StoreError> {
        let txn = db.begin_read().map_err(StoreError::db)?;
        let kv = txn.open_table(KV).map_err(StoreError::db)?;
        let name = kv.get((NODE_GROUP, "name")).map_err(StoreError::db)?.map(|v| v.value().to_vec());
        let inc = kv.get((NODE_GROUP, "incarnation")).map_err(StoreError::db)?.map(|v| v.value().to_vec());
        match (name, inc) {
            (Some(n), Some(i)) if i.len() == 8 => {
                let name = String::from_utf8(n)
                    .map_err(|e| StoreError::Corrupt { what: "node name".into(), detail: e.to_string() })?;
                let mut b = [0u8; 8];
                b.copy_from_slice(&i);
                Ok((name, u64::from_be_bytes(b)))
            }
            _ => {
                Err(StoreError::Corrupt { what: "node identity".into(), detail: "missing name or incarnation".into() })
            }
        }
    }

    /// Opens an existing store with default options; see [`Self::open_with`].
    pub fn open(disk: DiskRef, root: &Path, node_name: &str) -> Result<Arc<Store>, StoreError> {
        Self::open_with(disk, root, node_name, &StoreOptions::default())
    }

    /// Opens an existing store, recovers its Raft log and starts its writer task. Must be called
    /// inside a tokio runtime.
    pub fn open_with(
        disk: DiskRef,
        root: &Path,
        node_name: &str,
        options: &StoreOptions,
    ) -> Result<Arc<Store>, StoreError> {
        let file = root.join(DB_FILE);
        #[cfg(feature = "planted-bugs")]
        crate::planted::reinit_if_wiped(&disk, root, node_name);
        if !disk.exists(&file) {
            return Err(StoreError::Missing(root.to_path_buf()));
        }
        let db = Arc::new(Self::open_db(&disk, &file)?);
        let (found, incarnation) = Self::identity_of(&db)?;
        if found != node_name {
            return Err(StoreError::WrongNode { expected: node_name.to_string(), found });
        }
        upgrade_format(&db)?;
        // On the scheduling clock: real time in production, simulated time in the simulator.
        let replay = crate::seams::clock::scheduling_now();
        let log = Arc::new(RaftLog::open(disk.clone(), &root.join(LOG_DIR), options.log_file_bytes)?);
        move_legacy_log(&db, &log)?;
        let s = log.stats();
        tracing::info!(
            files = s.files,
            mib = s.bytes >> 20,
            live_mib = s.live_bytes >> 20,
            groups = log.groups().len(),
            replay_ms = crate::seams::clock::scheduling_now().saturating_duration_since(replay).as_millis() as u64,
            "raft log opened"
        );
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        tokio::spawn(run_writer(db.clone(), log.clone(), rx));
        Ok(Arc::new(Store {
            db,
            log,
            writer: tx,
            disk,
            root: root.to_path_buf(),
            node_name: node_name.to_string(),
            incarnation,
            chunk_sources: Default::default(),
        }))
    }

    /// The chunk repair source slot of `group` (one per group, created empty on first use).
    pub fn chunk_source_slot(&self, group: &str) -> super::chunks::SourceSlot {
        let mut slots = self.chunk_sources.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(group.to_string()).or_default().clone()
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }
    pub fn node_name(&self) -> &str {
        &self.node_name
    }
    pub fn disk(&self) -> &DiskRef {
        &self.disk
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn db(&self) -> &redb::Database {
        &self.db
    }
    pub fn raft_log(&self) -> &RaftLog {
        &self.log
    }

    /// Runs `work` in the next batch transaction and returns once that transaction is durable.
    pub async fn write(&self, work: Vec<TxnFn>) -> Result<(), StoreError> {
        self.submit(work, true).await
    }

    /// Runs `work` in the next batch transaction and returns once it is committed and visible to
    /// readers, not necessarily durable: it becomes durable with the next durable commit (the
    /// writer is one FIFO queue, and a durable redb commit persists every commit before it), and
    /// a power loss before that undoes it as a whole, never in part.
    ///
    /// Only for state that is derived from something already durable and rebuilt from it after
    /// a power loss: a group's applied state (catalog rows, the meta directory, the applied log
    /// id), which openraft re-applies from the durable Raft log, which in turn is never purged
    /// past the applied position except by a durable commit.
    pub async fn write_derived(&self, work: Vec<TxnFn>) -> Result<(), StoreError> {
        self.submit(work, false).await
    }

    async fn submit(&self, work: Vec<TxnFn>, durable: bool) -> Result<(), StoreError> {
        if work.is_empty() {
            return Ok(());
        }
        self.submit_job(vec![], work, durable).await
    }

    async fn submit_job(&self, log: Vec<LogOp>, work: Vec<TxnFn>, durable: bool) -> Result<(), StoreError> {
        let (done, rx) = oneshot::channel();
        self.writer
            .send(WriteJob { log, work, durable, done: Done::Wait(done) })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Appends `ops` to the Raft log in the next batch and returns once they are durable.
    pub async fn log_write(&self, ops: Vec<LogOp>) -> Result<(), StoreError> {
        self.submit_job(ops, vec![], true).await
    }

    /// Queues `ops` for the next batch's log append and returns as soon as they are queued
    /// (waiting only while the queue is full); `then` gets the outcome once that append is
    /// durable, or `WriterGone` if the writer stopped first. Jobs are written in the order they
    /// were queued.
    pub async fn log_write_then(&self, ops: Vec<LogOp>, then: ThenFn) {
        let job = WriteJob { log: ops, work: vec![], durable: true, done: Done::Then(then) };
        if let Err(mpsc::error::SendError(job)) = self.writer.send(job).await {
            job.done.send(Err(StoreError::WriterGone));
        }
    }

    /// Returns once every job queued before it has committed durably (a barrier for code that
    /// reads what a stopped group left on disk).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.write(vec![Box::new(|_| Ok(()))]).await
    }

    /// Reads one KV value.
    pub fn kv_get(&self, group: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(StoreError::db)?;
        let kv = txn.open_table(KV).map_err(StoreError::db)?;
        Ok(kv.get((group, key)).map_err(StoreError::db)?.map(|v| v.value().to_vec()))
    }

    /// Stages a KV put.
    pub fn kv_put(group: &str, key: &str, value: Vec<u8>) -> TxnFn {
        let (group, key) = (group.to_string(), key.to_string());
        Box::new(move |txn| {
            let mut kv = txn.open_table(KV).map_err(StoreError::db)?;
            kv.insert((group.as_str(), key.as_str()), value.as_slice()).map_err(StoreError::db)?;
            Ok(())
        })
    }

    /// Stages a KV delete (nothing if the key is absent).
    pub fn kv_delete(group: &str, key: &str) -> TxnFn {
        let (group, key) = (group.to_string(), key.to_string());
        Box::new(move |txn| {
            let mut kv = txn.open_table(KV).map_err(StoreError::db)?;
            kv.remove((group.as_str(), key.as_str())).map_err(StoreError::db)?;
            Ok(())
        })
    }
}

async fn run_writer(db: Arc<redb::Database>, log: Arc<RaftLog>, mut rx: mpsc::Receiver<WriteJob>) {
    while let Some(first) = rx.recv().await {
        // Let the tasks that are ready now queue their work too, so that it joins this batch
        // (a follower's log append and the apply of the entries it learned were committed
        // arrive together): one commit instead of two, at no cost in latency.
        tokio::task::yield_now().await;
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH_JOBS {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let mut dones = Vec::with_capacity(jobs.len());
        let mut works = Vec::with_capacity(jobs.len());
        let mut ops = vec![];
        let mut durable = false;
        for j in jobs {
            let has_redb_work = !j.work.is_empty();
            if has_redb_work {
                durable |= j.durable;
                works.push(j.work);
            }
            ops.extend(j.log);
            dones.push((j.done, has_redb_work));
        }
        // Two outcomes: one group's failing redb work must not fail the log appends of every
        // group that shared its batch (they are durable by then).
        let (log_result, db_result) = blocking(|| {
            // After the log failed, nothing more is written, redb included: openraft applies
            // entries it handed to the log before their flush, and that applied state must not
            // reach the disk when the entries did not.
            if let Some(why) = log.failed() {
                let e = StoreError::Io(format!(
                    "the raft log failed ({why}); the store takes no more writes until the node restarts"
                ));
                return (Err(e.clone()), Err(e));
            }
            // The log first: redb's applied state may rest on entries in this very batch.
            let log_result = if ops.is_empty() { Ok(()) } else { log.write(ops, true) };
            let db_result = match &log_result {
                Err(e) => Err(e.clone()),
                Ok(()) if works.is_empty() => Ok(()),
                Ok(()) => commit_batch(&db, works, durable),
            };
            (log_result, db_result)
        });
        if let Err(e) = &log_result {
            tracing::error!(error = %e, "raft log append failed; every write in the batch reports the failure");
        } else if let Err(e) = &db_result {
            tracing::error!(error = %e, "store commit failed; its writes report the failure, the batch's log appends stand");
        }
        for (done, has_redb_work) in dones {
            done.send(if has_redb_work { db_result.clone() } else { log_result.clone() });
        }
        if let Err(e) = blocking(|| log.maintain()) {
            tracing::error!(error = %e, "raft log upkeep failed");
        }
    }
}

/// Brings a store written before its values were versioned to [`STORE_FORMAT`]: in one durable
/// transaction, every value of [`RAFT_KV_KEYS`] (a store without a format) and every catalog row
/// (without a format, or format 1) gets its version byte and the store its format,
/// so a crash leaves either the old store or the upgraded one. Refuses a format this build does
/// not know (a newer tetrad's store) rather than misread it.
fn upgrade_format(db: &redb::Database) -> Result<(), StoreError> {
    let mut legacy: Vec<(String, String, Vec<u8>)> = vec![];
    let mut rows: Vec<(String, String, Vec<u8>)> = vec![];
    {
        let txn = db.begin_read().map_err(StoreError::db)?;
        let kv = txn.open_table(KV).map_err(StoreError::db)?;
        let found = match kv.get((NODE_GROUP, FORMAT_KEY)).map_err(StoreError::db)? {
            Some(v) if v.value() == [STORE_FORMAT] => return Ok(()),
            Some(v) if v.value() == [1] => Some(1),
            Some(v) => {
                return Err(StoreError::UnknownVersion {
                    what: "the store's format".into(),
                    found: v.value().first().copied().unwrap_or(0),
                    known: STORE_FORMAT,
                })
            }
            None => None,
        };
        if found.is_none() {
            for item in kv.iter().map_err(StoreError::db)? {
                let (k, v) = item.map_err(StoreError::db)?;
                let (group, key) = k.value();
                if group != NODE_GROUP && RAFT_KV_KEYS.contains(&key) {
                    legacy.push((group.to_string(), key.to_string(), versioned::upgrade_value(v.value())));
                }
            }
        }
        // Format 1 and before: catalog rows are bare postcard.
        match txn.open_table(SEGMENTS) {
            Ok(segments) => {
                for item in segments.iter().map_err(StoreError::db)? {
                    let (k, v) = item.map_err(StoreError::db)?;
                    let (group, name) = k.value();
                    rows.push((group.to_string(), name.to_string(), versioned::upgrade_value(v.value())));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(StoreError::db(e)),
        }
    }
    let mut txn = db.begin_write().map_err(StoreError::db)?;
    txn.set_durability(redb::Durability::Immediate).map_err(StoreError::db)?;
    {
        let mut kv = txn.open_table(KV).map_err(StoreError::db)?;
        for (group, key, value) in &legacy {
            kv.insert((group.as_str(), key.as_str()), value.as_slice()).map_err(StoreError::db)?;
        }
        kv.insert((NODE_GROUP, FORMAT_KEY), [STORE_FORMAT].as_slice()).map_err(StoreError::db)?;
        let mut segments = txn.open_table(SEGMENTS).map_err(StoreError::db)?;
        for (group, name, row) in &rows {
            segments.insert((group.as_str(), name.as_str()), row.as_slice()).map_err(StoreError::db)?;
        }
    }
    txn.commit().map_err(StoreError::db)?;
    tracing::info!(
        values = legacy.len(),
        rows = rows.len(),
        format = STORE_FORMAT,
        "upgraded the store's values and catalog rows to versioned encodings"
    );
    Ok(())
}

/// Moves the entries of a store written before the Raft log left redb into the log files, then
/// drops the old table: the entries are durable in the files before the table goes.
fn move_legacy_log(db: &redb::Database, log: &RaftLog) -> Result<(), StoreError> {
    const LEGACY_PIECE_BYTES: usize = 64 << 20;
    let mut ops: Vec<LogOp> = vec![];
    let mut moved = 0usize;
    {
        let txn = db.begin_read().map_err(StoreError::db)?;
        let table = match txn.open_table(LEGACY_LOG) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(StoreError::db(e)),
        };
        let mut held = 0usize;
        for item in table.iter().map_err(StoreError::db)? {
            let (k, v) = item.map_err(StoreError::db)?;
            let (group, index) = k.value();
            let entry = (index, v.value().to_vec());
            held += entry.1.len();
            moved += 1;
            match ops.last_mut() {
                Some(LogOp::Entries { group: g, entries }) if &**g == group => entries.push(entry),
                _ => ops.push(LogOp::Entries { group: group.into(), entries: vec![entry] }),
            }
            // In synced pieces, so a large old log never sits in memory whole.
            if held >= LEGACY_PIECE_BYTES {
                blocking(|| log.write(std::mem::take(&mut ops), true))?;
                held = 0;
            }
        }
    }
    blocking(|| log.write(ops, true))?;
    let mut txn = db.begin_write().map_err(StoreError::db)?;
    txn.set_durability(redb::Durability::Immediate).map_err(StoreError::db)?;
    txn.delete_table(LEGACY_LOG).map_err(StoreError::db)?;
    txn.commit().map_err(StoreError::db)?;
    tracing::info!(entries = moved, "moved the raft log out of redb into its own files");
    Ok(())
}

/// Commits one batch: with `Durability::Immediate` (one fdatasync, which also persists every
/// earlier non-durable commit) when any job in it must be durable, else with `Durability::None`
/// (visible to readers, no page flush, no sync).
fn commit_batch(db: &redb::Database, works: Vec<Vec<TxnFn>>, durable: bool) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(StoreError::db)?;
    let durability = if durable { redb::Durability::Immediate } else { redb::Durability::None };
    txn.set_durability(durability).map_err(StoreError::db)?;
    for work in works {
        for f in work {
            if let Err(e) = f(&txn) {
                txn.abort().map_err(StoreError::db)?;
                return Err(e);
            }
        }
    }
    txn.commit().map_err(StoreError::db)
}

#[cfg(test)]
impl Store {
    /// Makes the store at `root` look as a build from before versioned values left it: no store
    /// format, and `rows` ((group, key, bytes) in the `kv` table) as that build wrote them.
    pub(crate) fn write_legacy_rows(disk: &DiskRef, root: &Path, rows: &[(&str, &str, Vec<u8>)]) {
        let db = Self::open_db(disk, &root.join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut kv = txn.open_table(KV).unwrap();
            kv.remove((NODE_GROUP, FORMAT_KEY)).unwrap();
            for (group, key, value) in rows {
                kv.insert((*group, *key), value.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    /// Test support: makes the closed store at `root` look as a format-1 build wrote it (values
    /// versioned, catalog rows bare), with `rows` ((group, segment name, bytes)) in its catalog.
    #[cfg(test)]
    pub(crate) fn write_format1_catalog_rows(disk: &DiskRef, root: &Path, rows: &[(&str, &str, Vec<u8>)]) {
        let db = Self::open_db(disk, &root.join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut kv = txn.open_table(KV).unwrap();
            kv.insert((NODE_GROUP, FORMAT_KEY), [1u8].as_slice()).unwrap();
            let mut segments = txn.open_table(SEGMENTS).unwrap();
            for (group, name, value) in rows {
                segments.insert((*group, *name), value.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seams::disk::{DiskEvent, OsDisk};

    fn is_sync_of_db(e: &DiskEvent) -> bool {
        matches!(e, DiskEvent::Fdatasync(p) | DiskEvent::FsyncFile(p) if p.ends_with(DB_FILE))
    }

    #[tokio::test]
    async fn a_write_returns_only_after_the_database_file_was_synced() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, log) = OsDisk::recording();
        let disk: DiskRef = Arc::new(disk);
        Store::init(disk.clone(), dir.path(), "n1", 7).unwrap();
        let store = Store::open(disk, dir.path(), "n1").unwrap();
        log.take();
        store.write(vec![Store::kv_put("g", "k", b"v".to_vec())]).await.unwrap();
        let events = log.take();
        let last_write = events.iter().rposition(|e| matches!(e, DiskEvent::Write(p) if p.ends_with(DB_FILE)));
        let last_sync = events.iter().rposition(is_sync_of_db);
        assert!(last_write.is_some(), "the commit wrote the database: {events:?}");
        assert!(
            last_sync > last_write,
            "a sync of the database follows its last write before write() returned: {events:?}"
        );
        assert_eq!(store.kv_get("g", "k").unwrap(), Some(b"v".to_vec()));
    }

    #[tokio::test]
    async fn concurrent_writes_of_many_groups_share_commits() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, log) = OsDisk::recording();
        let disk: DiskRef = Arc::new(disk);
        Store::init(disk.clone(), dir.path(), "n1", 7).unwrap();
        let store = Store::open(disk, dir.path(), "n1").unwrap();
        log.take();
        let mut tasks = vec![];
        for g in 0..64 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                s.write(vec![Store::kv_put(&format!("g{g}"), "k", vec![g as u8])]).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let syncs = log.take().iter().filter(|e| is_sync_of_db(e)).count();
        assert!((1..64).contains(&syncs), "64 concurrent writes took {syncs} syncs; group commit should fold them");
        for g in 0..64u8 {
            assert_eq!(store.kv_get(&format!("g{g}"), "k").unwrap(), Some(vec![g]));
        }
    }

    #[tokio::test]
    async fn a_log_append_returns_only_after_the_log_file_was_synced_and_is_read_back_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, log) = OsDisk::recording();
        let disk: DiskRef = Arc::new(disk);
        Store::init(disk.clone(), dir.path(), "n1", 7).unwrap();
        let store = Store::open(disk.clone(), dir.path(), "n1").unwrap();
        log.take();
        let op = LogOp::Entries { group: "g".into(), entries: vec![(1, b"one".to_vec()), (2, b"two".to_vec())] };
        store.log_write(vec![op]).await.unwrap();
        let events = log.take();
        let in_log = |p: &std::path::Path| p.parent().is_some_and(|d| d.ends_with(LOG_DIR));
        let last_write = events.iter().rposition(|e| matches!(e, DiskEvent::Write(p) if in_log(p)));
        let last_sync =
            events.iter().rposition(|e| matches!(e, DiskEvent::Fdatasync(p) | DiskEvent::FsyncFile(p) if in_log(p)));
        assert!(last_write.is_some(), "the append wrote a log file: {events:?}");
        assert!(last_sync > last_write, "a sync of the log file follows its write: {events:?}");
        assert!(
            !events.iter().any(|e| matches!(e, DiskEvent::Write(p) if p.ends_with(DB_FILE))),
            "a log append alone does not touch the database: {events:?}"
        );
        drop(store);
        tokio::task::yield_now().await;
        let store = Store::open(disk, dir.path(), "n1").unwrap();
        let back: Vec<(u64, Vec<u8>)> =
            store.raft_log().read("g", 0, 9).unwrap().into_iter().map(|(i, e)| (i, e.bytes().to_vec())).collect();
        assert_eq!(back, vec![(1, b"one".to_vec()), (2, b"two".to_vec())]);
    }

    #[tokio::test]
    async fn a_store_with_its_log_in_redb_has_it_moved_to_the_log_files_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let disk: DiskRef = Arc::new(OsDisk::new());
        Store::init(disk.clone(), dir.path(), "n1", 7).unwrap();
        {
            // What an older version left: entries in redb's "log" table.
            let db = Store::open_db(&disk, &dir.path().join(DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(LEGACY_LOG).unwrap();
                t.insert(("a", 1), b"a1".as_slice()).unwrap();
                t.insert(("a", 2), b"a2".as_slice()).unwrap();
                t.insert(("b", 5), b"b5".as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let store = Store::open(disk.clone(), dir.path(), "n1").unwrap();
        let read = |s: &Store, g: &str| -> Vec<(u64, Vec<u8>)> {
            s.raft_log().read(g, 0, 9).unwrap().into_iter().map(|(i, e)| (i, e.bytes().to_vec())).collect()
        };
        assert_eq!(read(&store, "a"), vec![(1, b"a1".to_vec()), (2, b"a2".to_vec())]);
        assert_eq!(read(&store, "b"), vec![(5, b"b5".to_vec())]);
        {
            let txn = store.db().begin_read().unwrap();
            assert!(
                matches!(txn.open_table(LEGACY_LOG), Err(redb::TableError::TableDoesNotExist(_))),
                "the old table is dropped once its entries are in the files"
            );
        }
        drop(store);
        tokio::task::yield_now().await;
        let store = Store::open(disk, dir.path(), "n1").unwrap();
        assert_eq!(read(&store, "a").len(), 2, "moved once, not twice");
    }

    #[tokio::test]
    async fn a_failing_redb_write_does_not_fail_the_log_appends_that_shared_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let disk: DiskRef = Arc::new(OsDisk::new());
        Store::init(disk.clone(), dir.path(), "n1", 7).unwrap();
        let store = Store::open(disk, dir.path(), "n1").unwrap();
        let failing: TxnFn =
            Box::new(|_| Err(StoreError::Corrupt { what: "a group's state".into(), detail: "planted".into() }));
        let op = LogOp::Entries { group: "other".into(), entries: vec![(1, b"entry".to_vec())] };
        // Queued in one instant: the writer folds them into one batch.
        let (redb, log) = tokio::join!(store.write(vec![failing]), store.log_write(vec![op]));
        assert!(matches!(redb, Err(StoreError::Corrupt { .. })), "{redb:?}");
        assert!(log.is_ok(), "the append is durable and must say so: {log:?}");
        assert_eq!(store.raft_log().bounds("other"), Some((1, 1)));
    }

    #[tokio::test]
    async fn a_store_written_before_values_were_versioned_is_upgraded_once_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let disk: DiskRef = Arc::new(OsDisk::new());
        Store::init(disk.clone(), dir.path(), "n1", 7).unwrap();
        let rows = [
            ("t/a/1", "vote", vec![3, 2, 0]),
            ("t/a/1", "applied", vec![1, 3, 2, 9]),
            ("meta", "membership", vec![0, 5]),
            ("meta", "purged", vec![7]),
            // Not the raft layer's: its owner encodes it, the upgrade leaves it alone.
            ("meta", "state", vec![1, 2, 3]),
        ];
        Store::write_legacy_rows(&disk, dir.path(), &rows);
        for round in 0..2 {
            let store = Store::open(disk.clone(), dir.path(), "n1").unwrap();
            for (group, key, legacy) in &rows {
                let expected = if *key == "state" { legacy.clone() } else { versioned::upgrade_value(legacy) };
                assert_eq!(store.kv_get(group, key).unwrap(), Some(expected), "round {round}: {group} {key}");
            }
            assert_eq!(store.kv_get(NODE_GROUP, FORMAT_KEY).unwrap(), Some(vec![STORE_FORMAT]));
            assert_eq!((store.node_name(), store.incarnation()), ("n1", 7));
            drop(store);
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_store_of_an_unknown_format_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let disk: DiskRef = Arc::new(OsDisk::new());
        Store::init(disk.clone(), dir.path(), "n1", 7).unwrap();
        Store::write_legacy_rows(
            &disk,
            dir.path(),
            &[("t/a/1", "vote", vec![9]), (NODE_GROUP, FORMAT_KEY, vec![STORE_FORMAT + 1])],
        );
        let err = Store::open(disk.clone(), dir.path(), "n1").unwrap_err();
        let newer = STORE_FORMAT + 1;
        assert!(
            matches!(err, StoreError::UnknownVersion { found, known: STORE_FORMAT, .. } if found == newer),
            "{err:?}"
        );
        let db = Store::open_db(&disk, &dir.path().join(DB_FILE)).unwrap();
        let txn = db.begin_read().unwrap();
        let kv = txn.open_table(KV).unwrap();
        assert_eq!(kv.get(("t/a/1", "vote")).unwrap().unwrap().value(), [9], "nothing was rewritten");
    }

    #[tokio::test]
    async fn identity_is_checked_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let disk: DiskRef = Arc::new(OsDisk::new());
        let empty = dir.path().join("wiped");
        assert!(matches!(Store::open(disk.clone(), &empty, "n1"), Err(StoreError::Missing(_))));
        Store::init(disk.clone(), dir.path(), "n1", 42).unwrap();
        assert!(matches!(Store::init(disk.clone(), dir.path(), "n1", 43), Err(StoreError::AlreadyInitialised(_, _))));
        assert!(matches!(Store::open(disk.clone(), dir.path(), "n2"), Err(StoreError::WrongNode { .. })));
        let s = Store::open(disk, dir.path(), "n1").unwrap();
        assert_eq!(s.incarnation(), 42, "a second init must not have replaced the incarnation");
    }
}
