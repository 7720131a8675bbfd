//! The disk seam: every byte a node persists goes through [`Disk`].
//!
//! Two kinds of persistence exist: redb databases (Raft log, vote, state machines), opened as a
//! [`redb::StorageBackend`] from [`Disk::open_backend`], and whole immutable files (content-
//! addressed WAL chunks, snapshots) written with [`Disk::write_file_durable`]. The production
//! implementation ([`OsDisk`]) calls fdatasync on every written file and fsync on the directory of
//! every new file before reporting success; the simulator's disk loses whatever was not synced
//! when a node crashes.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A node's disk.
pub trait Disk: Send + Sync + std::fmt::Debug + 'static {
    /// Opens (creating if absent, with its directory made durable) a random-access file that
    /// backs a redb database.
    fn open_backend(&self, path: &Path) -> io::Result<Box<dyn redb::StorageBackend>>;
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
