//! The disk seam: every byte a node persists goes through [`Disk`].
//!
//! Two kinds of persistence exist:
//! - random-access files ([`RandomAccessFile`], from [`Disk::open_backend`]): the node's redb
//!   database (votes, purge marks, state machines), handed to redb through the one adapter
//!   [`RedbFile`], and the Raft log files (`storage/log_files.rs`), which use the trait directly;
//! - whole immutable files (content-addressed WAL chunks, snapshots) written with
//!   [`Disk::write_file_durable`].
//!
//! The production implementation ([`OsDisk`]) calls fdatasync on every written file and fsync on
//! the directory of every new file before reporting success; the simulator's disk (`sim/disk.rs`)
//! implements the same two traits and loses whatever was not synced when a node crashes.

use std::fmt;
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::BackendError;

/// A file opened for reads and writes at any offset, whose bytes are durable only once
/// [`Self::sync_data`] returned. Both disks implement it; redb reaches it through [`RedbFile`].
#[expect(
    clippy::len_without_is_empty,
    reason = "a file's length is an I/O call that can fail, and no caller asks whether a file is empty"
)]
pub trait RandomAccessFile: Send + Sync + fmt::Debug + 'static {
    /// The file's length in bytes, as reads see it (synced or not).
    fn len(&self) -> io::Result<u64>;
    /// Fills `out` from `offset`; `ErrorKind::UnexpectedEof` when that runs past the end.
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()>;
    /// Writes `data` at `offset`, extending the file with zeros up to it if needed. Not durable
    /// until the next successful [`Self::sync_data`].
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Truncates or extends (with zeros) the file. Not durable until the next sync.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes every earlier write and length change durable (fdatasync or stronger). After a
    /// failed sync the file must never report a later sync as successful.
    fn sync_data(&self) -> io::Result<()>;
    /// Releases what the file holds (its locks); called once, when redb closes the database.
    fn close(&self) -> io::Result<()> {
        Ok(())
    }
    /// The byte-range locks that keep a second opener (another process, or a second open in this
    /// one) off a live redb database, as redb's own file backend implements them; `None` where
    /// there is nothing to lock against (the simulated disk), and redb then does without.
    fn redb_locks(&self) -> Option<&dyn redb::StorageBackend> {
        None
    }
}

/// The one adapter from the disk seam to redb: a [`RandomAccessFile`] as redb's
/// [`redb::StorageBackend`] (`redb::Database::builder().create_with_backend(RedbFile(file))`).
#[derive(Debug)]
pub struct RedbFile(pub Box<dyn RandomAccessFile>);

impl RedbFile {
    fn locks(&self) -> Result<&dyn redb::StorageBackend, BackendError> {
        self.0.redb_locks().ok_or(BackendError::Unsupported)
    }
}

impl redb::StorageBackend for RedbFile {
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write(offset, data)
    }
    fn close(&self) -> io::Result<()> {
        self.0.close()
    }
    // Every lock method is forwarded: dropping one would silently disable redb's locking. Without
    // locks they answer `Unsupported`, as redb's defaults do.
    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.locks()?.try_lock_range(start, end)
    }
    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.locks()?.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.locks()?.lock_range(start, end)
    }
    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.locks()?.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.locks()?.unlock_range(start, end)
    }
    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.locks()?.query_lock_range(start, end)
    }
}

/// A node's disk.
pub trait Disk: Send + Sync + std::fmt::Debug + 'static {
    /// Opens (creating if absent, with its directory made durable) a random-access file: the
    /// bytes under a redb database ([`RedbFile`]) or a Raft log file.
    fn open_backend(&self, path: &Path) -> io::Result<Box<dyn RandomAccessFile>>;
    /// Writes a whole file so that, when this returns `Ok`, the file's bytes and its directory
    /// entry are on stable storage. Replaces any existing file at `path` atomically.
    fn write_file_durable(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Reads a whole file. `ErrorKind::NotFound` when absent.
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Whether a file exists.
    fn exists(&self, path: &Path) -> bool;
    /// Removes a file durably (its directory is synced); removing an absent file is not an error.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Creates a directory and its parents, durably.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// File names (not paths) directly inside `dir`, sorted. Empty when `dir` is absent.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
}

pub type DiskRef = Arc<dyn Disk>;

pub use super::os_disk::{DiskEvent, DiskLog, OsDisk};

/// Joins a relative name under a root; used by callers that keep paths relative to a data dir.
pub fn under(root: &Path, rel: &str) -> PathBuf {
    root.join(rel)
}
