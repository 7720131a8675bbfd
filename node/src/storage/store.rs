//! The node's redb database and its single writer (group commit).
//!
//! redb admits one write transaction at a time. Rather than let every group block on that lock,
//! all writes of all groups on a node go to one writer task, which drains whatever is queued into
//! one transaction and commits it with `Durability::Immediate` (one fdatasync for the batch):
//! group commit across a node's groups. Callers await their job's completion, so a write is
//! reported durable only after the commit that contains it returned.
//!
//! The store also carries the node's storage identity: an incarnation id created with the store.
//! A wiped node has no store; `Store::open` refuses it and `Store::init` gives it a new
//! incarnation, under which it can only rejoin as a new member.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use crate::seams::disk::DiskRef;

/// Raft log entries: (group, index) -> encoded entry.
pub const LOG: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("log");
/// Small per-group values: (group, key) -> bytes (vote, purged id, applied state, ...).
pub const KV: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("kv");
/// Tenant catalogs: (group, segment name) -> encoded segment record.
pub const SEGMENTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("segments");

const NODE_GROUP: &str = "node";
const DB_FILE: &str = "tetrad.redb";
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

/// Adapter so a boxed backend from the disk seam can be handed to redb.
#[derive(Debug)]
struct DynBackend(Box<dyn redb::StorageBackend>);

impl redb::StorageBackend for DynBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.0.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.0.close()
    }
    // The locks keep a second process from opening a live database: forward them all.
    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.0.try_lock_range(start, end)
    }
    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.0.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.0.lock_range(start, end)
    }
    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.0.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.0.unlock_range(start, end)
    }
    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.0.query_lock_range(start, end)
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
    writer: mpsc::Sender<WriteJob>,
    disk: DiskRef,
    root: PathBuf,
    node_name: String,
    incarnation: u64,
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
            txn.open_table(LOG).map_err(StoreError::db)?;
            txn.open_table(SEGMENTS).map_err(StoreError::db)?;
        }
        txn.commit().map_err(StoreError::db)?;
        Ok(())
    }

    fn open_db(disk: &DiskRef, file: &Path) -> Result<redb::Database, StoreError> {
        let backend = disk.open_backend(file).map_err(|e| StoreError::Io(format!("open {}: {e}", file.display())))?;
        redb::Database::builder().create_with_backend(DynBackend(backend)).map_err(StoreError::db)
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

    /// Opens an existing store and starts its writer task. Must be called inside a tokio runtime.
    pub fn open(disk: DiskRef, root: &Path, node_name: &str) -> Result<Arc<Store>, StoreError> {
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
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        tokio::spawn(run_writer(db.clone(), rx));
        Ok(Arc::new(Store {
            db,
            writer: tx,
            disk,
            root: root.to_path_buf(),
            node_name: node_name.to_string(),
            incarnation,
        }))
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
        let (done, rx) = oneshot::channel();
        self.writer
            .send(WriteJob { work, durable, done: Done::Wait(done) })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Queues `work` for the next durable batch and returns as soon as it is queued (waiting only
    /// while the queue is full); `then` gets the outcome once that batch committed durably, or
    /// `WriterGone` if the writer stopped first. Jobs commit in the order they were queued.
    pub async fn write_durable_then(&self, work: Vec<TxnFn>, then: ThenFn) {
        let job = WriteJob { work, durable: true, done: Done::Then(then) };
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
}

async fn run_writer(db: Arc<redb::Database>, mut rx: mpsc::Receiver<WriteJob>) {
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
        let mut durable = false;
        for j in jobs {
            durable |= j.durable;
            dones.push(j.done);
            works.push(j.work);
        }
        let result = blocking(|| commit_batch(&db, works, durable));
        if let Err(e) = &result {
            tracing::error!(error = %e, "store batch failed; every write in it reports the failure");
        }
        for d in dones {
            d.send(result.clone());
        }
    }
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

/// Collects the keys of one group in `table` whose second component lies in `range`.
pub fn group_keys<R: std::ops::RangeBounds<u64>>(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    group: &str,
    range: R,
) -> Result<Vec<u64>, StoreError> {
    use std::ops::Bound;
    let lo = match range.start_bound() {
        Bound::Included(&x) => x,
        Bound::Excluded(&x) => x.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let hi = match range.end_bound() {
        Bound::Included(&x) => Some(x),
        Bound::Excluded(&x) => x.checked_sub(1),
        Bound::Unbounded => Some(u64::MAX),
    };
    let Some(hi) = hi else { return Ok(vec![]) };
    if lo > hi {
        return Ok(vec![]);
    }
    let mut out = vec![];
    for item in table.range((group, lo)..=(group, hi)).map_err(StoreError::db)? {
        let (k, _) = item.map_err(StoreError::db)?;
        out.push(k.value().1);
    }
    Ok(out)
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
        assert!(syncs >= 1 && syncs < 64, "64 concurrent writes took {syncs} syncs; group commit should fold them");
        for g in 0..64u8 {
            assert_eq!(store.kv_get(&format!("g{g}"), "k").unwrap(), Some(vec![g]));
        }
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
