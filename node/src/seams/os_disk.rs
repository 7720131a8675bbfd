//! The production disk: [`OsDisk`], the [`Disk`] seam over the operating system's file system.
//!
//! This module owns the durability recipe that every ack relies on (DESIGN.md, "Storage"):
//! - a whole file is written to a hidden temporary file in the same directory, fdatasync'd,
//!   renamed over its target, and then the directory is fsync'd, so the new name survives a power
//!   loss and a reader never sees a half-written file;
//! - a redb database file is opened through [`OsDisk::open_backend`], whose `sync_data` is a real
//!   fdatasync (a full fsync after the file's length changed), and whose directory is fsync'd
//!   before the backend is handed out;
//! - new directories and removals are made durable by fsyncing the directories that changed.
//!
//! Every fdatasync, fsync, rename, create, write and removal goes through a few small functions
//! (`fdatasync`, `fsync_file`, `fsync_dir`, ...) that perform the real system call and, when the
//! disk was built with [`OsDisk::recording`], append a [`DiskEvent`] to a [`DiskLog`]. Events are
//! appended after the call has succeeded, so the log's order is the order in which operations
//! completed; the tests below assert exact sequences, and `tests/tests/durability_syscalls.rs`
//! checks the same sequence from outside the process with strace.

use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::backends::FileBackend;
use redb::StorageBackend;

use super::disk::{Disk, RandomAccessFile};

/// Temporary files of [`Disk::write_file_durable`] start with a dot and end with this suffix;
/// [`Disk::list_dir`] hides them, so one left behind by a crash is never taken for data.
const TEMP_SUFFIX: &str = ".tetrad-tmp";

/// Makes temporary names unique within the process, so that two concurrent writes of the same
/// file (an idempotent retry racing the original) never share a temporary file.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// One completed file-system operation, as recorded by a recording [`OsDisk`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskEvent {
    /// A new, empty file was created.
    CreateFile(PathBuf),
    /// Bytes were written to a file (not yet durable).
    Write(PathBuf),
    /// A file's length was changed (not yet durable).
    SetLen(PathBuf, u64),
    /// `fdatasync` on a file returned success.
    Fdatasync(PathBuf),
    /// `fsync` on a file returned success.
    FsyncFile(PathBuf),
    /// `fsync` on a directory returned success.
    FsyncDir(PathBuf),
    /// A file was renamed.
    Rename { from: PathBuf, to: PathBuf },
    /// A directory was created.
    CreateDir(PathBuf),
    /// A file was removed.
    Remove(PathBuf),
}

/// A shared, append-only log of [`DiskEvent`]s; clones share one log.
#[derive(Clone, Default)]
pub struct DiskLog(Arc<Mutex<Vec<DiskEvent>>>);

impl DiskLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// The events recorded so far, oldest first.
    pub fn events(&self) -> Vec<DiskEvent> {
        self.lock().clone()
    }

    /// Returns the events recorded so far and empties the log.
    pub fn take(&self) -> Vec<DiskEvent> {
        std::mem::take(&mut *self.lock())
    }

    fn push(&self, event: DiskEvent) {
        self.lock().push(event);
    }

    // A panic while holding this lock cannot leave the vector half-updated (push is the only
    // mutation), so a poisoned lock is read through.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<DiskEvent>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl fmt::Debug for DiskLog {
    // The log can hold thousands of events; a backend's Debug output must stay one line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskLog").field("events", &self.lock().len()).finish()
    }
}

/// The production [`Disk`]: the operating system's file system, with fdatasync and directory
/// fsync wherever the seam promises durability.
#[derive(Clone, Debug, Default)]
pub struct OsDisk {
    log: Option<DiskLog>,
}

impl OsDisk {
    pub fn new() -> Self {
        Self { log: None }
    }

    /// A disk that also appends every file-system operation it completes to `log`.
    pub fn with_sync_log(log: DiskLog) -> Self {
        Self { log: Some(log) }
    }

    /// A recording disk and the log it appends to.
    pub fn recording() -> (Self, DiskLog) {
        let log = DiskLog::new();
        (Self::with_sync_log(log.clone()), log)
    }

    fn record(&self, event: DiskEvent) {
        record(self.log.as_ref(), event);
    }

    /// Writes, syncs and renames the temporary file; the caller removes it if this fails.
    fn write_temp_and_rename(&self, tmp: &Path, target: &Path, data: &[u8]) -> io::Result<()> {
        let mut file =
            OpenOptions::new().write(true).create_new(true).open(tmp).map_err(|e| context(e, "create", tmp))?;
        self.record(DiskEvent::CreateFile(tmp.to_path_buf()));
        file.write_all(data).map_err(|e| context(e, "write", tmp))?;
        self.record(DiskEvent::Write(tmp.to_path_buf()));
        // fdatasync covers the file's size as well as its bytes: fdatasync(2) flushes "metadata
        // needed to allow a subsequent data retrieval", which names st_size explicitly.
        fdatasync(self.log.as_ref(), &file, tmp)?;
        drop(file);
        fs::rename(tmp, target).map_err(|e| context(e, "rename to its target", tmp))?;
        self.record(DiskEvent::Rename { from: tmp.to_path_buf(), to: target.to_path_buf() });
        Ok(())
    }
}

impl Disk for OsDisk {
    fn open_backend(&self, path: &Path) -> io::Result<Box<dyn RandomAccessFile>> {
        let file = match OpenOptions::new().read(true).write(true).create_new(true).open(path) {
            Ok(file) => {
                self.record(DiskEvent::CreateFile(path.to_path_buf()));
                file
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                OpenOptions::new().read(true).write(true).open(path).map_err(|e| context(e, "open", path))?
            }
            Err(e) => return Err(context(e, "create", path)),
        };
        // Synced on every open, not only when the file is new. A node that died between creating
        // the file and fsyncing its directory finds the file present on restart, and a node that
        // died mid-commit may have left written-but-unsynced pages in the page cache, which redb
        // would read at open and the node might act on (a vote, say) before its next commit.
        // Syncing the file and then its directory here makes everything redb is about to read
        // durable; on a clean file both calls are nearly free.
        fsync_file(self.log.as_ref(), &file, path)?;
        fsync_dir(self.log.as_ref(), parent_dir(path))?;
        // redb's own FileBackend implements its byte-range locking (OFD locks, which belong to
        // the open file description and so are shared by a duplicated descriptor). Delegating to
        // it keeps a second process, or a second open in this one, off a live database.
        let lock_fd = file.try_clone().map_err(|e| context(e, "duplicate the descriptor of", path))?;
        let locks = FileBackend::new(lock_fd).map_err(io::Error::other)?;
        Ok(Box::new(OsBackend {
            file,
            path: path.to_path_buf(),
            locks,
            length_changed: AtomicBool::new(false),
            sync_failed: AtomicBool::new(false),
            log: self.log.clone(),
        }))
    }

    fn write_file_durable(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let name = path.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{} has no file name", path.display()))
        })?;
        let dir = parent_dir(path);
        let tmp = dir.join(temp_name(name));
        if let Err(e) = self.write_temp_and_rename(&tmp, path, data) {
            // The write already failed and that error is the one to report; a temporary file that
            // cannot be removed is hidden from list_dir and harmless.
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        // Only now is the new name durable: rename changed the directory, not the file.
        fsync_dir(self.log.as_ref(), dir)
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path).map_err(|e| context(e, "read", path))
    }

    fn exists(&self, path: &Path) -> bool {
        fs::symlink_metadata(path).is_ok()
    }

    /// Removes a file and fsyncs its directory, so a removal, like every other change to a
    /// directory made through this seam, is durable when this returns.
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        match fs::remove_file(path) {
            Ok(()) => {
                self.record(DiskEvent::Remove(path.to_path_buf()));
                fsync_dir(self.log.as_ref(), parent_dir(path))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(context(e, "remove", path)),
        }
    }

    /// Creates each missing directory top-down; after each `mkdir` it fsyncs the new directory
    /// (so its own inode is on disk) and then its parent (so the entry naming it is).
    ///
    /// Directories that already exist are not synced: that leaves a window in which a process
    /// killed between a `mkdir` and its fsync, followed by a power loss before the kernel writes
    /// the directory back, loses the directory. Closing it would mean fsyncing every ancestor up
    /// to `/` on every call, some of which may sit on file systems that refuse fsync.
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut missing = Vec::new();
        let mut cursor = Some(path);
        while let Some(dir) = cursor {
            if dir.as_os_str().is_empty() {
                break;
            }
            match fs::metadata(dir) {
                Ok(meta) if meta.is_dir() => break,
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("{} exists and is not a directory", dir.display()),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    missing.push(dir);
                    cursor = dir.parent();
                }
                Err(e) => return Err(context(e, "inspect", dir)),
            }
        }
        for dir in missing.into_iter().rev() {
            match fs::create_dir(dir) {
                Ok(()) => self.record(DiskEvent::CreateDir(dir.to_path_buf())),
                // Another thread created it first. Its fsyncs may not have happened yet, so this
                // call does them too rather than return before the directory is durable.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(context(e, "create directory", dir)),
            }
            fsync_dir(self.log.as_ref(), dir)?;
            fsync_dir(self.log.as_ref(), parent_dir(dir))?;
        }
        Ok(())
    }

    /// Entry names (files and directories) directly inside `dir`, sorted, without the temporary
    /// files of interrupted writes.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(context(e, "list", dir)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| context(e, "list", dir))?;
            let name = entry.file_name().into_string().map_err(|raw| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} holds a name that is not UTF-8: {raw:?}", dir.display()),
                )
            })?;
            if !is_temp_name(&name) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }
}

/// A random-access file (a redb database, a Raft log file) on the operating system's file system.
#[derive(Debug)]
struct OsBackend {
    file: File,
    path: PathBuf,
    /// redb's file backend over a duplicate of `file`, used only for its locks.
    locks: FileBackend,
    /// Set by `set_len`; the next `sync_data` is then a full fsync (see there).
    length_changed: AtomicBool,
    /// Set when a sync failed. Linux may drop the dirty pages of a failed writeback and mark them
    /// clean, so a later fsync can succeed without the data ever reaching the disk (PostgreSQL's
    /// "fsyncgate"). Once a sync failed, this file is never reported durable again.
    sync_failed: AtomicBool,
    log: Option<DiskLog>,
}

impl RandomAccessFile for OsBackend {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata().map_err(|e| context(e, "stat", &self.path))?.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(out, offset).map_err(|e| context(e, "read", &self.path))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len).map_err(|e| context(e, "set the length of", &self.path))?;
        self.length_changed.store(true, Ordering::Release);
        record(self.log.as_ref(), DiskEvent::SetLen(self.path.clone(), len));
        Ok(())
    }

    /// fdatasync, or a full fsync for the first sync after the length changed.
    ///
    /// fdatasync alone is specified to be enough (fdatasync(2): a change to the file size "would
    /// require a metadata flush"), and ext4 and xfs honour it. The full fsync is belt and braces
    /// that costs almost nothing: the inode must be written anyway when the size changed, and
    /// redb changes the size rarely (it grows the file a region at a time), so almost every
    /// commit still pays only for an fdatasync.
    fn sync_data(&self) -> io::Result<()> {
        if self.sync_failed.load(Ordering::Acquire) {
            return Err(io::Error::other(format!(
                "an earlier sync of {} failed, so its unsynced writes may be lost; restart the node",
                self.path.display()
            )));
        }
        let length_changed = self.length_changed.swap(false, Ordering::AcqRel);
        let result = if length_changed {
            fsync_file(self.log.as_ref(), &self.file, &self.path)
        } else {
            fdatasync(self.log.as_ref(), &self.file, &self.path)
        };
        if result.is_err() {
            self.sync_failed.store(true, Ordering::Release);
        }
        result
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset).map_err(|e| context(e, "write", &self.path))?;
        record(self.log.as_ref(), DiskEvent::Write(self.path.clone()));
        Ok(())
    }

    fn close(&self) -> io::Result<()> {
        self.locks.close()
    }

    fn redb_locks(&self) -> Option<&dyn StorageBackend> {
        Some(&self.locks)
    }
}

// The syscall layer: each function performs the real call and records it once it has succeeded.

fn record(log: Option<&DiskLog>, event: DiskEvent) {
    if let Some(log) = log {
        log.push(event);
    }
}

fn fdatasync(log: Option<&DiskLog>, file: &File, path: &Path) -> io::Result<()> {
    file.sync_data().map_err(|e| context(e, "fdatasync", path))?;
    record(log, DiskEvent::Fdatasync(path.to_path_buf()));
    Ok(())
}

fn fsync_file(log: Option<&DiskLog>, file: &File, path: &Path) -> io::Result<()> {
    file.sync_all().map_err(|e| context(e, "fsync", path))?;
    record(log, DiskEvent::FsyncFile(path.to_path_buf()));
    Ok(())
}

fn fsync_dir(log: Option<&DiskLog>, dir: &Path) -> io::Result<()> {
    // A directory opened read-only can be fsync'd on Linux; it cannot be opened for writing.
    let handle = File::open(dir).map_err(|e| context(e, "open directory", dir))?;
    handle.sync_all().map_err(|e| context(e, "fsync directory", dir))?;
    record(log, DiskEvent::FsyncDir(dir.to_path_buf()));
    Ok(())
}

/// The directory holding `path`; `.` for a bare relative name.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

fn temp_name(name: &OsStr) -> String {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(".{}.{}.{n}{TEMP_SUFFIX}", name.to_string_lossy(), std::process::id())
}

fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(TEMP_SUFFIX)
}

/// Keeps the error's kind (callers match on `NotFound`) and adds what was being done to which path.
fn context(e: io::Error, action: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{action} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seams::disk::RedbFile;
    use redb::{Database, Durability, ReadableDatabase, TableDefinition};

    const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

    fn open_db(disk: &OsDisk, path: &Path) -> Database {
        let backend = disk.open_backend(path).unwrap();
        Database::builder().create_with_backend(RedbFile(backend)).unwrap()
    }

    fn commit(db: &Database, key: u64, value: &[u8], durability: Durability) {
        let mut txn = db.begin_write().unwrap();
        txn.set_durability(durability).unwrap();
        txn.open_table(TABLE).unwrap().insert(key, value).unwrap();
        txn.commit().unwrap();
    }

    fn is_sync_of(event: &DiskEvent, path: &Path) -> bool {
        matches!(event, DiskEvent::Fdatasync(p) | DiskEvent::FsyncFile(p) if p == path)
    }

    #[test]
    fn write_file_durable_writes_syncs_renames_then_syncs_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, log) = OsDisk::recording();
        let target = dir.path().join("chunk");

        disk.write_file_durable(&target, b"wal bytes").unwrap();

        let events = log.take();
        let DiskEvent::CreateFile(tmp) = &events[0] else { panic!("first event {:?}", events[0]) };
        assert_eq!(tmp.parent(), Some(dir.path()), "the temporary file must be in the target's directory");
        assert!(is_temp_name(tmp.file_name().unwrap().to_str().unwrap()), "{tmp:?} is not a hidden temporary name");
        assert_eq!(
            events,
            vec![
                DiskEvent::CreateFile(tmp.clone()),
                DiskEvent::Write(tmp.clone()),
                DiskEvent::Fdatasync(tmp.clone()),
                DiskEvent::Rename { from: tmp.clone(), to: target.clone() },
                DiskEvent::FsyncDir(dir.path().to_path_buf()),
            ]
        );
        assert_eq!(disk.read_file(&target).unwrap(), b"wal bytes");
        assert!(!tmp.exists());
    }

    #[test]
    fn write_file_durable_replaces_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let disk = OsDisk::new();
        let target = dir.path().join("catalog");
        disk.write_file_durable(&target, b"old and longer").unwrap();
        disk.write_file_durable(&target, b"new").unwrap();
        assert_eq!(disk.read_file(&target).unwrap(), b"new");
        assert_eq!(disk.list_dir(dir.path()).unwrap(), vec!["catalog".to_string()]);
    }

    #[test]
    fn write_file_durable_into_a_missing_directory_fails_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, log) = OsDisk::recording();
        let err = disk.write_file_durable(&dir.path().join("absent/chunk"), b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(log.take(), vec![]);
    }

    #[test]
    fn create_dir_all_syncs_each_new_directory_and_then_its_parent() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, log) = OsDisk::recording();
        let a = dir.path().join("a");
        let b = a.join("b");

        disk.create_dir_all(&b).unwrap();

        assert_eq!(
            log.take(),
            vec![
                DiskEvent::CreateDir(a.clone()),
                DiskEvent::FsyncDir(a.clone()),
                DiskEvent::FsyncDir(dir.path().to_path_buf()),
                DiskEvent::CreateDir(b.clone()),
                DiskEvent::FsyncDir(b.clone()),
                DiskEvent::FsyncDir(a.clone()),
            ]
        );
        assert!(b.is_dir());
        // Nothing to create, nothing to sync.
        disk.create_dir_all(&b).unwrap();
        assert_eq!(log.take(), vec![]);
    }

    #[test]
    fn create_dir_all_refuses_a_path_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let disk = OsDisk::new();
        let file = dir.path().join("f");
        disk.write_file_durable(&file, b"").unwrap();
        let err = disk.create_dir_all(&file.join("sub")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotADirectory);
    }

    #[test]
    fn open_backend_syncs_the_new_file_and_its_directory_before_returning() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, log) = OsDisk::recording();
        let path = dir.path().join("raft.redb");

        let backend = disk.open_backend(&path).unwrap();

        assert_eq!(
            log.take(),
            vec![
                DiskEvent::CreateFile(path.clone()),
                DiskEvent::FsyncFile(path.clone()),
                DiskEvent::FsyncDir(dir.path().to_path_buf()),
            ]
        );
        drop(backend);
        // Reopening an existing file syncs it and its directory again (see open_backend).
        let _backend = disk.open_backend(&path).unwrap();
        assert_eq!(log.take(), vec![DiskEvent::FsyncFile(path.clone()), DiskEvent::FsyncDir(dir.path().to_path_buf())]);
    }

    #[test]
    fn backend_sync_after_set_len_is_a_full_fsync_then_fdatasync() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, log) = OsDisk::recording();
        let path = dir.path().join("db");
        let backend = disk.open_backend(&path).unwrap();
        log.take();

        backend.set_len(8192).unwrap();
        backend.write(4096, &[7; 4096]).unwrap();
        backend.sync_data().unwrap();
        backend.write(0, &[1; 16]).unwrap();
        backend.sync_data().unwrap();

        assert_eq!(
            log.take(),
            vec![
                DiskEvent::SetLen(path.clone(), 8192),
                DiskEvent::Write(path.clone()),
                DiskEvent::FsyncFile(path.clone()),
                DiskEvent::Write(path.clone()),
                DiskEvent::Fdatasync(path.clone()),
            ]
        );
        let mut out = [0u8; 4];
        backend.read(4094, &mut out).unwrap();
        assert_eq!(out, [0, 0, 7, 7]);
        assert_eq!(backend.len().unwrap(), 8192);
        assert_eq!(backend.read(8190, &mut out).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn redb_immediate_commit_syncs_the_database_file_before_returning() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, log) = OsDisk::recording();
        let path = dir.path().join("raft.redb");
        let db = open_db(&disk, &path);
        log.take();

        // The first commit into a new database may grow the file, so its sync may be the full
        // fsync; either way it comes after the last write and before commit returns.
        commit(&db, 0, b"term", Durability::Immediate);
        let events = log.take();
        assert_eq!(last_sync_follows_last_write(&events, &path), events.len() - 1, "{events:?}");

        commit(&db, 1, b"vote", Durability::Immediate);
        let events = log.take();
        let last_sync = last_sync_follows_last_write(&events, &path);
        assert_eq!(last_sync, events.len() - 1, "nothing may follow the commit's sync: {events:?}");
        // The file did not grow, so the commit's sync is a plain fdatasync.
        assert_eq!(events[last_sync], DiskEvent::Fdatasync(path.clone()));
    }

    /// The index of the last sync of `path`, asserting that some write precedes it and none
    /// follows it.
    fn last_sync_follows_last_write(events: &[DiskEvent], path: &Path) -> usize {
        let last_write = events.iter().rposition(|e| *e == DiskEvent::Write(path.to_path_buf()));
        let last_sync = events.iter().rposition(|e| is_sync_of(e, path));
        let (Some(last_write), Some(last_sync)) = (last_write, last_sync) else {
            panic!("an Immediate commit must write and sync the database file: {events:?}")
        };
        assert!(last_write < last_sync, "the commit returned with writes after its last sync: {events:?}");
        last_sync
    }

    #[test]
    fn redb_non_durable_commit_does_not_sync() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, log) = OsDisk::recording();
        let path = dir.path().join("raft.redb");
        let db = open_db(&disk, &path);
        commit(&db, 0, b"warm-up", Durability::Immediate);
        log.take();

        commit(&db, 1, b"hint", Durability::None);

        let events = log.take();
        assert!(!events.iter().any(|e| is_sync_of(e, &path)), "{events:?}");
    }

    #[test]
    fn a_second_open_of_a_live_database_is_refused_by_the_delegated_locks() {
        let dir = tempfile::tempdir().unwrap();
        let disk = OsDisk::new();
        let path = dir.path().join("raft.redb");
        let db = open_db(&disk, &path);
        commit(&db, 1, b"one", Durability::Immediate);

        let second = disk.open_backend(&path).unwrap();
        let refused = Database::builder().create_with_backend(RedbFile(second));
        assert!(matches!(refused, Err(redb::DatabaseError::DatabaseAlreadyOpen)), "{refused:?}");

        drop(db);
        let db = open_db(&disk, &path);
        let read = db.begin_read().unwrap();
        assert_eq!(read.open_table(TABLE).unwrap().get(1).unwrap().unwrap().value(), b"one");
    }

    #[test]
    fn remove_file_syncs_the_directory_and_ignores_absent_files() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, log) = OsDisk::recording();
        let path = dir.path().join("chunk");
        disk.write_file_durable(&path, b"x").unwrap();
        log.take();

        disk.remove_file(&path).unwrap();
        assert_eq!(log.take(), vec![DiskEvent::Remove(path.clone()), DiskEvent::FsyncDir(dir.path().to_path_buf())]);
        assert!(!disk.exists(&path));

        disk.remove_file(&path).unwrap();
        assert_eq!(log.take(), vec![]);
    }

    #[test]
    fn list_dir_is_sorted_hides_temporary_files_and_is_empty_for_an_absent_directory() {
        let dir = tempfile::tempdir().unwrap();
        let disk = OsDisk::new();
        disk.write_file_durable(&dir.path().join("b"), b"").unwrap();
        disk.write_file_durable(&dir.path().join("a"), b"").unwrap();
        disk.create_dir_all(&dir.path().join("c")).unwrap();
        // What a crash in the middle of write_file_durable leaves behind.
        fs::write(dir.path().join(temp_name(OsStr::new("d"))), b"half").unwrap();

        assert_eq!(disk.list_dir(dir.path()).unwrap(), vec!["a", "b", "c"]);
        assert_eq!(disk.list_dir(&dir.path().join("absent")).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn read_file_of_an_absent_file_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let err = OsDisk::new().read_file(&dir.path().join("absent")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("absent"), "the error names the path: {err}");
    }
}
