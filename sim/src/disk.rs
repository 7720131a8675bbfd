//! The simulator's disk: [`SimDisk`], an in-memory [`Disk`] with a page cache that a crash empties.
//!
//! This module owns the simulated storage of one node and the disk faults the simulator injects.
//!
//! The model:
//! - **Names are durable at return.** The production disk fsyncs a directory after every change
//!   to it (a rename, a created file, a created directory, a removal), so here every such change
//!   is durable as soon as the call returns, and a crash never changes which files exist. A redb
//!   file that was opened but never synced therefore comes back after a crash, empty.
//! - **Contents have two copies.** Each file (an inode: a file replaced or removed while a backend
//!   still has it open lives on, nameless, as on Unix) has `durable` bytes, what the platters hold,
//!   and `volatile` bytes, what the page cache serves. [`Disk::write_file_durable`] sets both. A redb
//!   backend reads and writes `volatile`; its `sync_data` copies it to `durable`.
//! - **A crash** ([`SimDisk::crash`]) sets every file's `volatile` back to `durable` and kills
//!   every open backend: the disk's generation advances, and a backend of an older generation
//!   fails every call, so a zombie task of the crashed node cannot write to its successor's disk.
//! - **Torn writes** ([`SimDisk::crash_with`] with [`DiskFaults::torn_write_on_crash`]): unsynced
//!   bytes are not simply lost. The seed picks the crash's landing rate, one of 0, 1/4, 1/2, 3/4
//!   and 1 (so some crashes lose everything unsynced and some lose nothing); then each unit of
//!   `torn_unit_bytes` that differs between the cache and the disk, and an unsynced length change,
//!   independently reaches the disk with that probability. This is the power-loss model redb is
//!   designed for (it assumes only that single bytes are written atomically, and that bytes
//!   outside a write do not change).
//! - **Power loss during a sync** ([`SimDisk::crash_at_sync`]): the n-th backend `sync_data` from
//!   now crashes the disk (torn per the faults) instead of syncing, and fails; this is how a crash
//!   lands in the middle of a redb commit, which the simulator's own crashes (between tasks'
//!   steps) never do.
//! - **Bit rot** ([`SimDisk::rot_bit`]): one bit of a file's durable bytes flips, and later reads
//!   see it.
//! - **Wipe** ([`SimDisk::wipe`]): every file and directory is gone, as when a region's disks are
//!   replaced.
//!
//! Every random-looking decision is a hash of a seed the caller passes in; the disk has no random
//! generator of its own and never lets the order of a hash map decide anything, so one seed always
//! gives one outcome.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::hash::BuildHasherDefault;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tetrad_node::seams::disk::{Disk, RandomAccessFile};

mod pages;
#[cfg(test)]
mod raft_log_tests;
use pages::Pages;

/// The granularity at which the cache tracks which bytes a backend wrote since its last sync.
const PAGE_BYTES: usize = 4096;

/// Faults the simulator turns on; all off by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskFaults {
    /// On [`SimDisk::crash_with`] and [`SimDisk::crash_at_sync`], each unsynced unit of a backend
    /// file (and an unsynced length change) may reach the disk, at a rate the crash's seed picks
    /// (see the module docs), instead of every unsynced byte being lost.
    pub torn_write_on_crash: bool,
    /// The unit that tears: a power of two from 1 to 4096. 512 models a sector; redb claims to
    /// need only single-byte atomicity, which 1 tests.
    pub torn_unit_bytes: usize,
}

impl Default for DiskFaults {
    fn default() -> Self {
        Self { torn_write_on_crash: false, torn_unit_bytes: 512 }
    }
}

/// What the disk has done, for tests and for the simulator's report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Backend `sync_data` calls that succeeded.
    pub backend_syncs: u64,
    /// Successful [`Disk::write_file_durable`] calls (each is a data sync and a directory sync).
    pub durable_file_writes: u64,
    /// Bytes written by backends and by [`Disk::write_file_durable`].
    pub bytes_written: u64,
    /// Crashes, including those triggered by [`SimDisk::crash_at_sync`].
    pub crashes: u64,
    /// Calls to [`SimDisk::wipe`].
    pub wipes: u64,
    /// Unsynced units that a torn crash let reach the disk.
    pub torn_units_landed: u64,
}

/// An in-memory, deterministic disk; clones share one disk.
#[derive(Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

type InodeId = u64;

/// Names are looked up by hash (a path's ordering compares it component by component, which
/// cost about 2% of a run). The hasher has fixed keys, and nothing depends on the maps' order:
/// `list_dir` sorts what it finds.
type FixedHasher = BuildHasherDefault<DefaultHasher>;

#[derive(Default)]
struct State {
    /// Advances on every crash and wipe; backends of an older generation are dead.
    generation: u64,
    /// Directories that exist. The root and the empty path always exist and are not listed.
    dirs: HashSet<PathBuf, FixedHasher>,
    /// The durable namespace: which inode each file name refers to.
    files: HashMap<PathBuf, InodeId, FixedHasher>,
    inodes: BTreeMap<InodeId, Inode>,
    next_inode: InodeId,
    faults: DiskFaults,
    /// An armed power loss: (backend syncs still to pass, seed of the crash).
    crash_at_sync: Option<(u64, u64)>,
    stats: DiskStats,
    /// Files whose durable bytes [`SimDisk::rot_bit`] flipped (a fault, not a node's doing),
    /// until they are rewritten or the disk is wiped.
    rotted: HashSet<PathBuf, FixedHasher>,
}

#[derive(Default)]
struct Inode {
    durable: Pages,
    volatile: Pages,
    /// Indices of `PAGE_BYTES` pages in which `volatile` may differ from `durable`. Outside these
    /// pages the two agree wherever both have bytes (`assert_clean_pages_agree`).
    dirty_pages: BTreeSet<usize>,
    /// Whether a name refers to this inode.
    linked: bool,
    /// Live backends of the current generation on this inode.
    open_backends: u32,
}

impl Inode {
    fn with_contents(data: &[u8]) -> Self {
        let bytes = Pages::from_slice(data);
        Self { durable: bytes.clone(), volatile: bytes, linked: true, ..Self::default() }
    }

    fn mark_dirty(&mut self, start: usize, end: usize) {
        if start < end {
            self.dirty_pages.extend(start / PAGE_BYTES..end.div_ceil(PAGE_BYTES));
        }
    }

    fn sync(&mut self) {
        self.durable.take_len_of(&self.volatile);
        for &page in &self.dirty_pages {
            self.durable.take_page_of(&self.volatile, page);
        }
        self.dirty_pages.clear();
        debug_assert!(self.durable.same_bytes(&self.volatile));
    }

    /// What the disk holds after a power loss; `tear` says which unsynced units and length change
    /// got there anyway.
    /// Returns how many unsynced units reached the disk.
    fn crash(&mut self, tear: Option<Tear>, inode: InodeId) -> u64 {
        let mut landed = 0;
        let mut disk = std::mem::take(&mut self.durable);
        if let Some(tear) = tear {
            if self.volatile.len() != disk.len() && tear.lands(inode, u64::MAX) {
                disk.set_len(self.volatile.len());
            }
            let reachable = disk.len().min(self.volatile.len());
            for &page in &self.dirty_pages {
                let page_range = page_range(page, reachable);
                for start in page_range.clone().step_by(tear.unit_bytes) {
                    let unit = start..(start + tear.unit_bytes).min(page_range.end);
                    if !disk.same_range(&self.volatile, unit.clone())
                        && tear.lands(inode, (start / tear.unit_bytes) as u64)
                    {
                        disk.copy_range_from(&self.volatile, unit);
                        landed += 1;
                    }
                }
            }
        }
        self.volatile = disk.clone();
        self.durable = disk;
        self.dirty_pages.clear();
        self.open_backends = 0;
        landed
    }

    #[cfg(test)]
    fn assert_clean_pages_agree(&self) {
        let common = self.durable.len().min(self.volatile.len());
        for page in 0..common.div_ceil(PAGE_BYTES) {
            if !self.dirty_pages.contains(&page) {
                let range = page_range(page, common);
                assert!(self.durable.same_range(&self.volatile, range), "clean page {page} differs");
            }
        }
    }
}

/// The bytes of `page`, cut at `len`; empty when the page starts at or after `len`.
fn page_range(page: usize, len: usize) -> std::ops::Range<usize> {
    let start = (page * PAGE_BYTES).min(len);
    start..((page + 1) * PAGE_BYTES).min(len)
}

/// The decisions of one torn crash.
#[derive(Clone, Copy)]
struct Tear {
    seed: u64,
    unit_bytes: usize,
    /// The chance, in quarters, that an unsynced unit reaches the disk.
    landing_quarters: u64,
}

impl Tear {
    fn new(seed: u64, unit_bytes: usize) -> Self {
        // The extremes matter most: at 0 the crash is a clean loss, and at 1 everything a failed
        // sync was given reached the disk although the sync never returned.
        Self { seed, unit_bytes, landing_quarters: splitmix64(seed) % 5 }
    }

    /// Whether the unsynced unit `unit` of `inode` (or its length change, `u64::MAX`) reached the
    /// disk; the same for the same seed.
    fn lands(self, inode: InodeId, unit: u64) -> bool {
        let h = splitmix64(splitmix64(splitmix64(self.seed) ^ inode) ^ unit);
        h >> 62 < self.landing_quarters
    }
}

/// SplitMix64's finaliser: a cheap, well-mixed hash of a u64.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl State {
    fn dir_exists(&self, dir: &Path) -> bool {
        is_root(dir) || self.dirs.contains(dir)
    }

    fn require_parent(&self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(parent) if !self.dir_exists(parent) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: directory {} does not exist", path.display(), parent.display()),
            )),
            _ => Ok(()),
        }
    }

    fn require_not_dir(&self, path: &Path) -> io::Result<()> {
        if self.dir_exists(path) {
            return Err(io::Error::new(io::ErrorKind::IsADirectory, format!("{} is a directory", path.display())));
        }
        Ok(())
    }

    fn new_inode(&mut self, inode: Inode) -> InodeId {
        let id = self.next_inode;
        self.next_inode += 1;
        self.inodes.insert(id, inode);
        id
    }

    /// Drops an inode's name; the inode itself goes once no backend has it open.
    fn unlink(&mut self, id: InodeId) {
        let inode = self.inodes.get_mut(&id).expect("a name refers to an inode that does not exist");
        inode.linked = false;
        if inode.open_backends == 0 {
            self.inodes.remove(&id);
        }
    }

    fn crash(&mut self, tear: Option<Tear>) {
        self.generation += 1;
        self.crash_at_sync = None;
        self.stats.crashes += 1;
        // Open-but-unlinked inodes die with the handles that kept them alive.
        self.inodes.retain(|_, inode| inode.linked);
        for (&id, inode) in &mut self.inodes {
            self.stats.torn_units_landed += inode.crash(tear, id);
        }
    }

    fn tear(&self, seed: u64) -> Option<Tear> {
        self.faults.torn_write_on_crash.then(|| Tear::new(seed, self.faults.torn_unit_bytes))
    }
}

fn is_root(dir: &Path) -> bool {
    dir.as_os_str().is_empty() || dir == Path::new("/")
}

impl SimDisk {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the faults applied from now on.
    pub fn set_faults(&self, faults: DiskFaults) {
        assert!(
            faults.torn_unit_bytes.is_power_of_two() && faults.torn_unit_bytes <= PAGE_BYTES,
            "torn_unit_bytes must be a power of two from 1 to {PAGE_BYTES}, not {}",
            faults.torn_unit_bytes
        );
        self.lock().faults = faults;
    }

    pub fn faults(&self) -> DiskFaults {
        self.lock().faults
    }

    /// Power loss: every unsynced byte and length change is lost, and every open backend dies.
    pub fn crash(&self) {
        self.lock().crash(None);
    }

    /// Power loss with this disk's faults: when `torn_write_on_crash` is set, unsynced units
    /// reach the disk or not as `seed` decides; otherwise the same as [`Self::crash`].
    pub fn crash_with(&self, seed: u64) {
        let mut state = self.lock();
        let tear = state.tear(seed);
        state.crash(tear);
    }

    /// Arms a power loss during the `nth` backend `sync_data` from now (1 is the next one): that
    /// call crashes the disk as [`Self::crash_with`]`(seed)` would, before anything it was to sync
    /// is durable, and fails. Any crash or wipe disarms it; arming again replaces it.
    pub fn crash_at_sync(&self, nth: u64, seed: u64) {
        assert!(nth >= 1, "syncs are counted from 1");
        self.lock().crash_at_sync = Some((nth - 1, seed));
    }

    /// The process using the disk exits, the machine does not: every open backend dies, but the
    /// page cache keeps what was written, synced or not (a graceful restart).
    pub fn kill_backends(&self) {
        let mut state = self.lock();
        state.generation += 1;
        state.crash_at_sync = None;
        state.inodes.retain(|_, inode| inode.linked);
        for inode in state.inodes.values_mut() {
            inode.open_backends = 0;
        }
    }

    /// Disarms a power loss armed by [`Self::crash_at_sync`] that has not happened yet.
    pub fn disarm_crash_at_sync(&self) {
        self.lock().crash_at_sync = None;
    }

    /// Every file and directory is gone and every open backend dies.
    pub fn wipe(&self) {
        let mut state = self.lock();
        state.generation += 1;
        state.dirs.clear();
        state.files.clear();
        state.inodes.clear();
        state.crash_at_sync = None;
        state.stats.wipes += 1;
        state.rotted.clear();
    }

    /// The durable contents of `path`: what a power loss now would leave (`None`: no such file).
    pub fn durable_contents(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.lock();
        let id = state.files.get(path)?;
        Some(state.inodes.get(id).expect("a name refers to an inode that does not exist").durable.to_vec())
    }

    /// Whether the simulator rotted `path`'s bytes and nothing has replaced the file since.
    pub fn is_rotted(&self, path: &Path) -> bool {
        self.lock().rotted.contains(path)
    }

    /// Flips bit `bit` (0 to 7) of the byte at `offset` in the durable contents of `path`. Reads
    /// see the flip too, unless the byte's page holds an unsynced write, which the page cache
    /// serves instead (and which will overwrite the rotten byte when synced).
    pub fn rot_bit(&self, path: &Path, offset: u64, bit: u8) -> io::Result<()> {
        assert!(bit < 8, "bit {bit} is not a bit of a byte");
        let mut state = self.lock();
        let id = *state.files.get(path).ok_or_else(|| not_found(path))?;
        let inode = state.inodes.get_mut(&id).expect("a name refers to an inode that does not exist");
        let offset = usize::try_from(offset).unwrap_or(usize::MAX);
        if offset >= inode.durable.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} has {} durable bytes; cannot rot byte {offset}", path.display(), inode.durable.len()),
            ));
        }
        inode.durable.flip_bit(offset, bit);
        if !inode.dirty_pages.contains(&(offset / PAGE_BYTES)) && offset < inode.volatile.len() {
            inode.volatile.flip_bit(offset, bit);
        }
        state.rotted.insert(path.to_path_buf());
        Ok(())
    }

    pub fn stats(&self) -> DiskStats {
        self.lock().stats
    }

    // Nothing in this module panics while holding the lock except assertions of its invariants,
    // after which the simulation is over anyway; reading through a poisoned lock keeps the
    // original panic the one reported.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("SimDisk")
            .field("generation", &state.generation)
            .field("files", &state.files.len())
            .field("dirs", &state.dirs.len())
            .finish()
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{} does not exist", path.display()))
}

impl Disk for SimDisk {
    fn open_backend(&self, path: &Path) -> io::Result<Box<dyn RandomAccessFile>> {
        let mut state = self.lock();
        state.require_parent(path)?;
        state.require_not_dir(path)?;
        let id = match state.files.get(path) {
            Some(&id) => id,
            None => {
                let id = state.new_inode(Inode::with_contents(&[]));
                state.files.insert(path.to_path_buf(), id);
                id
            }
        };
        state.inodes.get_mut(&id).expect("a name refers to an inode that does not exist").open_backends += 1;
        Ok(Box::new(SimBackend {
            state: Arc::clone(&self.state),
            inode: id,
            generation: state.generation,
            path: path.to_path_buf(),
        }))
    }

    fn write_file_durable(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut state = self.lock();
        state.require_parent(path)?;
        state.require_not_dir(path)?;
        let id = state.new_inode(Inode::with_contents(data));
        if let Some(old) = state.files.insert(path.to_path_buf(), id) {
            state.unlink(old);
        }
        state.rotted.remove(path);
        state.stats.durable_file_writes += 1;
        state.stats.bytes_written += data.len() as u64;
        Ok(())
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let state = self.lock();
        state.require_not_dir(path)?;
        let id = state.files.get(path).ok_or_else(|| not_found(path))?;
        Ok(state.inodes[id].volatile.to_vec())
    }

    fn exists(&self, path: &Path) -> bool {
        let state = self.lock();
        state.files.contains_key(path) || state.dir_exists(path)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.require_not_dir(path)?;
        if let Some(id) = state.files.remove(path) {
            state.unlink(id);
        }
        Ok(())
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        let new_dirs: Vec<PathBuf> =
            path.ancestors().filter(|dir| !state.dir_exists(dir)).map(Path::to_path_buf).collect();
        if let Some(file) = path.ancestors().find(|dir| state.files.contains_key(*dir)) {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} exists and is not a directory", file.display()),
            ));
        }
        state.dirs.extend(new_dirs);
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.lock();
        let children = state.files.keys().chain(state.dirs.iter()).filter(|p| p.parent() == Some(dir));
        let mut names = Vec::new();
        for child in children {
            let name = child.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("{} has no UTF-8 file name", child.display()))
            })?;
            names.push(name.to_string());
        }
        names.sort();
        Ok(names)
    }
}

/// A random-access file (a redb database, a Raft log file) on a [`SimDisk`], alive until the disk
/// crashes or is wiped.
struct SimBackend {
    state: Arc<Mutex<State>>,
    inode: InodeId,
    generation: u64,
    path: PathBuf,
}

impl fmt::Debug for SimBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimBackend").field("path", &self.path).field("generation", &self.generation).finish()
    }
}

impl SimBackend {
    /// The disk state, if this backend is still alive.
    fn live(&self) -> io::Result<MutexGuard<'_, State>> {
        let state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.generation != self.generation {
            return Err(io::Error::other(format!(
                "{}: the simulated disk crashed or was wiped since this file was opened (generation {} is now {})",
                self.path.display(),
                self.generation,
                state.generation
            )));
        }
        Ok(state)
    }

    fn with_inode<T>(&self, f: impl FnOnce(&mut Inode, &mut DiskStats) -> io::Result<T>) -> io::Result<T> {
        let mut state = self.live()?;
        let state = &mut *state;
        let inode = state.inodes.get_mut(&self.inode).expect("a live backend's inode was dropped");
        f(inode, &mut state.stats)
    }
}

fn out_of_range(path: &Path, offset: u64, len: usize, file_len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("{}: {len} bytes at {offset} run past the end of the file ({file_len} bytes)", path.display()),
    )
}

impl RandomAccessFile for SimBackend {
    fn len(&self) -> io::Result<u64> {
        self.with_inode(|inode, _| Ok(inode.volatile.len() as u64))
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.with_inode(|inode, _| {
            let file_len = inode.volatile.len();
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            if start.checked_add(out.len()).is_none_or(|end| end > file_len) {
                return Err(out_of_range(&self.path, offset, out.len(), file_len));
            }
            inode.volatile.read(start, out);
            Ok(())
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("length {len} is too large")))?;
        self.with_inode(|inode, _| {
            let old = inode.volatile.len();
            // A shrink followed by a grow must read back zeros, not the bytes the disk still has
            // past the shrink, so the cut pages are dirty. A plain grow only adds zeros past the
            // durable end, where the sync will zero-fill too.
            if len < old {
                inode.mark_dirty(len, old);
            }
            inode.volatile.set_len(len);
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = self.live()?;
        match state.crash_at_sync {
            Some((0, seed)) => {
                let tear = state.tear(seed);
                state.crash(tear);
                return Err(io::Error::other(format!("{}: simulated power loss during sync", self.path.display())));
            }
            Some((passes, seed)) => state.crash_at_sync = Some((passes - 1, seed)),
            None => {}
        }
        let state = &mut *state;
        state.inodes.get_mut(&self.inode).expect("a live backend's inode was dropped").sync();
        state.stats.backend_syncs += 1;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.with_inode(|inode, stats| {
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            let end = start
                .checked_add(data.len())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("write at {offset} overflows")))?;
            // As a real file does, a write past the end extends it with zeros up to the write.
            inode.volatile.write(start, data);
            inode.mark_dirty(start, end);
            stats.bytes_written += data.len() as u64;
            Ok(())
        })
    }

    // Fails after a crash like every other call; redb logs a failed close and moves on.
    fn close(&self) -> io::Result<()> {
        self.live().map(drop)
    }
}

impl Drop for SimBackend {
    fn drop(&mut self) {
        // A dead backend's inode count was reset by the crash, and the inode may be gone.
        let Ok(mut state) = self.live() else { return };
        let inode = state.inodes.get_mut(&self.inode).expect("a live backend's inode was dropped");
        assert!(inode.open_backends > 0, "{}: more backends closed than opened", self.path.display());
        inode.open_backends -= 1;
        if !inode.linked && inode.open_backends == 0 {
            state.inodes.remove(&self.inode);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
    use tetrad_node::seams::disk::RedbFile;

    const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

    fn dir() -> PathBuf {
        PathBuf::from("/n1/data")
    }

    fn disk_with_dir() -> SimDisk {
        let disk = SimDisk::new();
        disk.create_dir_all(&dir()).unwrap();
        disk
    }

    fn open_db(disk: &SimDisk, path: &Path) -> Database {
        let backend = disk.open_backend(path).unwrap();
        Database::builder().create_with_backend(RedbFile(backend)).unwrap()
    }

    fn commit(db: &Database, key: u64, value: &[u8], durability: Durability) -> Result<(), redb::CommitError> {
        let mut txn = db.begin_write().unwrap();
        txn.set_durability(durability).unwrap();
        txn.open_table(TABLE).unwrap().insert(key, value).unwrap();
        txn.commit()
    }

    fn contents(db: &Database) -> BTreeMap<u64, Vec<u8>> {
        let read = db.begin_read().unwrap();
        let table = match read.open_table(TABLE) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return BTreeMap::new(),
            Err(e) => panic!("{e}"),
        };
        table
            .iter()
            .unwrap()
            .map(|entry| {
                let (k, v) = entry.unwrap();
                (k.value(), v.value().to_vec())
            })
            .collect()
    }

    /// A value of a few pages whose bytes depend on the key and a round, so a page torn from an
    /// older version of it would show.
    fn value(key: u64, round: u64, len: usize) -> Vec<u8> {
        (0..len).map(|i| splitmix64(key ^ (round << 32) ^ i as u64) as u8).collect()
    }

    #[test]
    fn a_durable_file_survives_a_crash() {
        let disk = disk_with_dir();
        let path = dir().join("chunk");
        disk.write_file_durable(&path, b"wal").unwrap();
        disk.crash();
        assert_eq!(disk.read_file(&path).unwrap(), b"wal");
        assert_eq!(disk.list_dir(&dir()).unwrap(), vec!["chunk"]);
    }

    #[test]
    fn a_backend_keeps_what_it_synced_and_loses_the_rest() {
        let disk = disk_with_dir();
        let path = dir().join("db");
        let backend = disk.open_backend(&path).unwrap();
        backend.set_len(8192).unwrap();
        backend.write(0, &[1; 4096]).unwrap();
        backend.sync_data().unwrap();
        backend.write(0, &[2; 10]).unwrap();
        backend.set_len(16384).unwrap();
        backend.write(12288, &[3; 4096]).unwrap();
        assert_eq!(disk.read_file(&path).unwrap().len(), 16384, "reads see the page cache");

        disk.crash();

        let mut expected = vec![1; 4096];
        expected.resize(8192, 0);
        assert_eq!(disk.read_file(&path).unwrap(), expected);
    }

    #[test]
    fn a_backend_file_never_synced_comes_back_empty() {
        let disk = disk_with_dir();
        let path = dir().join("db");
        let backend = disk.open_backend(&path).unwrap();
        backend.write(0, b"unsynced").unwrap();
        disk.crash();
        assert_eq!(disk.read_file(&path).unwrap(), b"");
    }

    #[test]
    fn a_shrink_then_grow_reads_zeros_before_and_after_a_sync() {
        let disk = disk_with_dir();
        let path = dir().join("db");
        let backend = disk.open_backend(&path).unwrap();
        backend.write(0, &[9; 8192]).unwrap();
        backend.sync_data().unwrap();
        backend.set_len(100).unwrap();
        backend.set_len(8192).unwrap();
        let mut out = [0xFF; 4];
        backend.read(5000, &mut out).unwrap();
        assert_eq!(out, [0; 4]);
        backend.sync_data().unwrap();
        disk.crash();
        let bytes = disk.read_file(&path).unwrap();
        assert_eq!(&bytes[..100], &[9; 100][..]);
        assert!(bytes[100..].iter().all(|&b| b == 0));
    }

    #[test]
    fn every_call_on_a_backend_opened_before_a_crash_fails() {
        let disk = disk_with_dir();
        let path = dir().join("db");
        let zombie = disk.open_backend(&path).unwrap();
        zombie.write(0, b"before").unwrap();
        zombie.sync_data().unwrap();
        disk.crash();
        let fresh = disk.open_backend(&path).unwrap();

        let mut out = [0; 1];
        assert!(zombie.len().is_err());
        assert!(zombie.read(0, &mut out).is_err());
        assert!(zombie.write(0, b"zombie").is_err());
        assert!(zombie.set_len(0).is_err());
        assert!(zombie.sync_data().is_err());
        assert!(zombie.close().is_err());
        drop(zombie);

        let mut out = [0; 6];
        fresh.read(0, &mut out).unwrap();
        assert_eq!(&out, b"before");
    }

    #[test]
    fn a_file_replaced_while_open_lives_on_for_its_backend() {
        let disk = disk_with_dir();
        let path = dir().join("db");
        let backend = disk.open_backend(&path).unwrap();
        backend.write(0, b"old inode").unwrap();
        disk.write_file_durable(&path, b"new").unwrap();
        let mut out = [0; 9];
        backend.read(0, &mut out).unwrap();
        assert_eq!(&out, b"old inode");
        assert_eq!(disk.read_file(&path).unwrap(), b"new");
        drop(backend);
        assert_eq!(disk.lock().inodes.len(), 1, "the orphan inode is freed with its last backend");
    }

    #[test]
    fn redb_keeps_an_immediate_commit_across_a_crash() {
        let disk = disk_with_dir();
        let path = dir().join("raft.redb");
        let db = open_db(&disk, &path);
        commit(&db, 1, b"vote", Durability::Immediate).unwrap();

        disk.crash();
        // The crashed node's database is dropped after the crash; its closing writes must fail.
        drop(db);

        let db = open_db(&disk, &path);
        assert_eq!(contents(&db), BTreeMap::from([(1, b"vote".to_vec())]));
    }

    #[test]
    fn redb_loses_a_non_durable_commit_in_a_crash() {
        let disk = disk_with_dir();
        let path = dir().join("raft.redb");
        let db = open_db(&disk, &path);
        commit(&db, 1, b"durable", Durability::Immediate).unwrap();
        commit(&db, 2, b"not durable", Durability::None).unwrap();
        assert_eq!(contents(&db).len(), 2, "the non-durable commit is visible before the crash");

        disk.crash();
        drop(db);

        let db = open_db(&disk, &path);
        assert_eq!(contents(&db), BTreeMap::from([(1, b"durable".to_vec())]));
    }

    #[test]
    fn redb_over_torn_crashes_keeps_every_acked_commit_and_no_partial_one() {
        const SEEDS: u64 = 48;
        const ROUNDS: u64 = 6;
        let mut torn_units_landed = 0;
        let mut interrupted_commits = 0;
        let mut interrupted_commits_kept = 0;
        for seed in 0..SEEDS {
            let unit = [1, 64, 512, 4096][(seed % 4) as usize];
            let disk = disk_with_dir();
            disk.set_faults(DiskFaults { torn_write_on_crash: true, torn_unit_bytes: unit });
            let path = dir().join("raft.redb");
            // What redb reported durable. Every recovery must return exactly this or, after a
            // power loss inside a commit, exactly this plus that whole commit.
            let mut acked: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
            for round in 0..ROUNDS {
                let context = format!("seed {seed} (unit {unit}) round {round}");
                // A small cache makes redb write pages back before it syncs, so a crash finds
                // unsynced pages in the page cache to tear.
                let backend = disk.open_backend(&path).unwrap();
                let db = Database::builder().set_cache_size(64 * 1024).create_with_backend(RedbFile(backend)).unwrap();
                assert_eq!(contents(&db), acked, "{context}: recovery lost or invented data");
                for key in 0..3 {
                    let v = value(key, round, 3000);
                    commit(&db, key + round, &v, Durability::Immediate).unwrap();
                    acked.insert(key + round, v);
                }
                // A non-durable commit over the same keys: visible, never acked.
                let mut visible = acked.clone();
                let mut txn = db.begin_write().unwrap();
                txn.set_durability(Durability::None).unwrap();
                {
                    let mut table = txn.open_table(TABLE).unwrap();
                    for key in 0..40 {
                        let v = value(key, round + 100, 5000);
                        table.insert(key, v.as_slice()).unwrap();
                        visible.insert(key, v);
                    }
                }
                txn.commit().unwrap();
                let crash_seed = seed * ROUNDS + round;
                let outcomes = if round % 2 == 0 {
                    // Power fails during one of the syncs of a durable commit (redb also syncs
                    // when it grows the file), chosen by the seed.
                    let mut whole = visible.clone();
                    let new_values: Vec<(u64, Vec<u8>)> =
                        (100..104).map(|key| (key, value(key, round + 200, 6000))).collect();
                    whole.extend(new_values.iter().cloned());
                    disk.crash_at_sync(1 + (seed / 4 + round) % 3, crash_seed);
                    let attempt = || -> Result<(), redb::Error> {
                        let txn = db.begin_write()?;
                        {
                            let mut table = txn.open_table(TABLE)?;
                            for (key, v) in &new_values {
                                table.insert(*key, v.as_slice())?;
                            }
                        }
                        txn.commit()?;
                        Ok(())
                    };
                    if attempt().is_ok() {
                        // The commit needed fewer syncs than the armed one: it is acked, and the
                        // power fails after it.
                        disk.crash_with(crash_seed);
                        vec![whole]
                    } else {
                        interrupted_commits += 1;
                        vec![acked.clone(), whole]
                    }
                } else {
                    // Power fails between commits: the non-durable one must be gone.
                    disk.crash_with(crash_seed);
                    vec![acked.clone()]
                };
                // The crashed node's database goes away after the crash, and cannot write.
                drop(db);
                let db = open_db(&disk, &path);
                let found = contents(&db);
                drop(db);
                assert!(
                    outcomes.contains(&found),
                    "{context}: recovered {} keys, neither the last acked state nor it plus the \
                     interrupted commit",
                    found.len()
                );
                if outcomes.len() == 2 && found == outcomes[1] {
                    interrupted_commits_kept += 1;
                }
                acked = found;
            }
            torn_units_landed += disk.stats().torn_units_landed;
        }
        // Guards against a test that exercises nothing.
        assert!(interrupted_commits >= SEEDS / 2, "only {interrupted_commits} commits were interrupted");
        assert!(torn_units_landed > 0, "no crash tore anything");
        assert!(
            interrupted_commits_kept > 0 && interrupted_commits_kept < interrupted_commits,
            "every interrupted commit was {}; both outcomes should occur",
            if interrupted_commits_kept == 0 { "lost" } else { "kept" }
        );
    }

    #[test]
    fn a_torn_crash_applies_whole_units_and_follows_the_seed() {
        let run = |seed: u64| {
            let disk = disk_with_dir();
            disk.set_faults(DiskFaults { torn_write_on_crash: true, torn_unit_bytes: 512 });
            let path = dir().join("db");
            let backend = disk.open_backend(&path).unwrap();
            backend.write(0, &[1; 8192]).unwrap();
            backend.sync_data().unwrap();
            backend.write(0, &[2; 8192]).unwrap();
            disk.crash_with(seed);
            disk.read_file(&path).unwrap()
        };
        let torn = run(7);
        assert_eq!(torn.len(), 8192);
        for unit in torn.chunks(512) {
            assert!(unit == [1; 512] || unit == [2; 512], "a unit is neither old nor new");
        }
        assert!(torn.chunks(512).any(|u| u[0] == 1) && torn.chunks(512).any(|u| u[0] == 2), "seed 7 tore nothing");
        assert_eq!(run(7), torn, "the same seed gives the same tear");
        assert!((0..8).map(run).any(|t| t != torn), "different seeds give different tears");
    }

    #[test]
    fn a_crash_without_torn_writes_loses_every_unsynced_unit() {
        let disk = disk_with_dir();
        let path = dir().join("db");
        let backend = disk.open_backend(&path).unwrap();
        backend.write(0, &[1; 8192]).unwrap();
        backend.sync_data().unwrap();
        backend.write(0, &[2; 8192]).unwrap();
        disk.crash_with(7);
        assert_eq!(disk.read_file(&path).unwrap(), vec![1; 8192]);
    }

    #[test]
    fn bit_rot_is_visible_to_read_file_and_survives_a_crash() {
        let disk = disk_with_dir();
        let path = dir().join("chunk");
        disk.write_file_durable(&path, &[0b1010_0000; 4]).unwrap();
        disk.rot_bit(&path, 2, 0).unwrap();
        assert_eq!(disk.read_file(&path).unwrap(), [0b1010_0000, 0b1010_0000, 0b1010_0001, 0b1010_0000]);
        disk.crash();
        assert_eq!(disk.read_file(&path).unwrap()[2], 0b1010_0001);
        assert_eq!(disk.rot_bit(&path, 4, 0).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn bit_rot_under_an_unsynced_write_is_hidden_until_the_crash() {
        let disk = disk_with_dir();
        let path = dir().join("db");
        let backend = disk.open_backend(&path).unwrap();
        backend.write(0, &[0; 4096]).unwrap();
        backend.sync_data().unwrap();
        backend.write(0, &[5; 1]).unwrap();
        disk.rot_bit(&path, 1, 3).unwrap();
        assert_eq!(disk.read_file(&path).unwrap()[1], 0, "the cache serves the dirty page");
        disk.lock().inodes.values().for_each(Inode::assert_clean_pages_agree);
        disk.crash();
        assert_eq!(disk.read_file(&path).unwrap()[..2], [0, 8]);
    }

    #[test]
    fn wipe_removes_everything_and_kills_backends() {
        let disk = disk_with_dir();
        let backend = disk.open_backend(&dir().join("db")).unwrap();
        disk.write_file_durable(&dir().join("chunk"), b"x").unwrap();
        disk.wipe();
        assert!(!disk.exists(&dir()));
        assert_eq!(disk.list_dir(&dir()).unwrap(), Vec::<String>::new());
        assert!(backend.len().is_err());
        assert_eq!(disk.write_file_durable(&dir().join("chunk"), b"x").unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn directories_behave_like_a_file_system() {
        let disk = SimDisk::new();
        let file = Path::new("/n1/data/chunk");
        assert_eq!(disk.write_file_durable(file, b"x").unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(disk.open_backend(file).unwrap_err().kind(), io::ErrorKind::NotFound);
        disk.create_dir_all(&dir()).unwrap();
        disk.create_dir_all(&dir().join("sub")).unwrap();
        disk.write_file_durable(file, b"x").unwrap();
        disk.write_file_durable(&dir().join("a"), b"y").unwrap();
        assert_eq!(disk.list_dir(&dir()).unwrap(), vec!["a", "chunk", "sub"]);
        assert_eq!(disk.list_dir(Path::new("/n1")).unwrap(), vec!["data"]);
        assert_eq!(disk.list_dir(Path::new("/absent")).unwrap(), Vec::<String>::new());
        assert_eq!(disk.create_dir_all(&file.join("x")).unwrap_err().kind(), io::ErrorKind::NotADirectory);
        assert_eq!(disk.read_file(&dir()).unwrap_err().kind(), io::ErrorKind::IsADirectory);
        assert_eq!(disk.read_file(&dir().join("absent")).unwrap_err().kind(), io::ErrorKind::NotFound);
        disk.remove_file(file).unwrap();
        disk.remove_file(file).unwrap();
        assert!(!disk.exists(file));
        assert!(disk.exists(&dir()));
        disk.crash();
        assert_eq!(disk.list_dir(&dir()).unwrap(), vec!["a", "sub"], "names are durable at return");
    }

    #[test]
    fn stats_count_syncs_and_bytes() {
        let disk = disk_with_dir();
        let backend = disk.open_backend(&dir().join("db")).unwrap();
        backend.write(0, &[1; 100]).unwrap();
        backend.sync_data().unwrap();
        backend.sync_data().unwrap();
        disk.write_file_durable(&dir().join("chunk"), &[2; 50]).unwrap();
        disk.crash_at_sync(1, 0);
        assert!(backend.sync_data().is_err());
        disk.crash();
        assert_eq!(
            disk.stats(),
            DiskStats {
                backend_syncs: 2,
                durable_file_writes: 1,
                bytes_written: 150,
                crashes: 2,
                wipes: 0,
                torn_units_landed: 0
            }
        );
    }
}
