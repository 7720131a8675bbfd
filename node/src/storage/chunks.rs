//! Content-addressed chunk files: WAL bytes, named by their blake3 hash.
//!
//! A chunk is written once through the disk seam (durably: file fdatasync'd, directory fsync'd)
//! and never changed, except to repair it. Reads verify the hash, so bit rot is reported, never
//! served. A store given a [`ChunkSource`] (in a node: the other members of the chunk's group,
//! `node/repair.rs`) repairs a rotten or missing chunk from a healthy copy
//! ([`ChunkStore::get_or_repair`]): the copy is verified, then written with the same durability
//! as any chunk write, replacing the damaged file atomically.
//!
//! Each tenant has its own namespace, `<data dir>/chunks/<tenant>/` ([`ChunkStore::for_tenant`]),
//! shared by all of the tenant's epochs (groups `t/<tenant>/<epoch>`), so that one tenant's chunks
//! can be counted, moved or deleted without looking at another's. Builds before that kept every
//! tenant's chunks in one global `<data dir>/chunks/`: a tenant's store still finds a chunk there
//! when its own namespace lacks it, and copies it (verified, durably) into its own namespace.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use futures::future::BoxFuture;

use crate::seams::disk::DiskRef;
use crate::seams::net::NodeId;
use crate::storage::store::blocking;

/// WAL segments are split into chunks of at most this size.
pub const CHUNK_BYTES: usize = 1 << 20;

pub type Hash = [u8; 32];

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("chunk {0} is missing")]
    Missing(String),
    #[error("chunk {0} is corrupt on this replica (its bytes no longer match their blake3)")]
    Corrupt(String),
    #[error("chunk I/O failed: {0}")]
    Io(String),
    /// The local copy is damaged (`damage` says how) and no healthy copy could be fetched.
    #[error("{damage}; no healthy copy could be fetched to repair it: {why}")]
    Unrepaired { damage: String, why: String },
}

/// A healthy copy of a chunk, and the node that supplied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub from: NodeId,
    pub data: Vec<u8>,
}

/// Where a replica gets a healthy copy of a chunk it lost to rot (or that went missing).
pub trait ChunkSource: Send + Sync + 'static {
    /// A copy of chunk `hash`, or why none could be had. The store verifies the bytes again
    /// before it writes or serves them: a source (a peer) may be wrong.
    fn fetch(&self, hash: Hash) -> BoxFuture<'static, Result<Fetched, String>>;
}

/// What checking one chunk found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    Intact,
    /// It was damaged and has been rewritten from `from`'s copy.
    Repaired {
        from: NodeId,
    },
}

pub fn hex(h: &Hash) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in h {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

pub fn parse_hex(s: &str) -> Option<Hash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Where a chunk store finds its repair source; shared by every store built on one slot, so the
/// source set through one (a group's state) serves the others (the group's log store).
pub type SourceSlot = Arc<RwLock<Option<Arc<dyn ChunkSource>>>>;

/// The chunk files under `<data dir>/chunks` (or a tenant's `<data dir>/chunks/<tenant>`).
/// Cheap to clone; clones share the repair source and the repair counter.
/// The file of chunk `h` in the chunk directory `dir`: `<dir>/<first two hex digits>/<hex>`.
fn chunk_file(dir: &std::path::Path, h: &Hash) -> PathBuf {
    let x = hex(h);
    dir.join(&x[..2]).join(x)
}

/// Where tenant `tenant`'s chunk `h` lives under the data directory `root` (its namespace,
/// [`ChunkStore::for_tenant`]): what the simulator's oracles read on a node's disk.
pub fn tenant_chunk_path(root: &std::path::Path, tenant: &str, h: &Hash) -> PathBuf {
    chunk_file(&root.join("chunks").join(tenant), h)
}

#[derive(Clone)]
pub struct ChunkStore {
    disk: DiskRef,
    dir: Arc<PathBuf>,
    /// The global directory of builds before per-tenant namespaces, read when `dir` lacks a chunk.
    legacy: Option<Arc<PathBuf>>,
    source: SourceSlot,
    repairs: Arc<AtomicU64>,
}

impl std::fmt::Debug for ChunkStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkStore")
            .field("dir", &self.dir)
            .field("repairable", &self.current_source().is_some())
            .field("repairs", &self.repairs())
            .finish()
    }
}

impl ChunkStore {
    /// The one global chunk directory `<root>/chunks` (what every build before per-tenant
    /// namespaces used; tests and tools that want a plain directory of chunks).
    pub fn new(disk: DiskRef, root: &std::path::Path) -> Self {
        Self {
            disk,
            dir: Arc::new(root.join("chunks")),
            legacy: None,
            source: SourceSlot::default(),
            repairs: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The namespace of `tenant` under the data directory `root`: `<root>/chunks/<tenant>`, with
    /// the global `<root>/chunks` of earlier builds as a fallback for reads. Tenant names are
    /// validated (`a-z`, `0-9`, `-`, `_`, never starting with `-`), and a chunk's own directory is
    /// two hex digits, so a tenant's namespace never collides with a legacy chunk directory.
    pub fn for_tenant(disk: DiskRef, root: &std::path::Path, tenant: &str) -> Self {
        debug_assert!(!tenant.is_empty() && !tenant.contains('/') && tenant != "." && tenant != "..", "{tenant:?}");
        let global = root.join("chunks");
        Self {
            disk,
            dir: Arc::new(global.join(tenant)),
            legacy: Some(Arc::new(global)),
            source: SourceSlot::default(),
            repairs: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The tenant of a tenant group's name (`t/<tenant>/<epoch>`), `None` for other groups.
    pub fn tenant_of_group(group: &str) -> Option<&str> {
        let (tenant, epoch) = group.strip_prefix("t/")?.rsplit_once('/')?;
        (!tenant.is_empty() && !tenant.contains('/') && epoch.parse::<u64>().is_ok()).then_some(tenant)
    }

    /// The chunk store of a tenant group (`t/<tenant>/<epoch>`) on the node whose data directory is
    /// `root`; `None` for a group that is not a tenant's.
    pub fn for_group(disk: DiskRef, root: &std::path::Path, group: &str) -> Option<Self> {
        Self::tenant_of_group(group).map(|t| Self::for_tenant(disk, root, t))
    }

    /// [`ChunkStore::for_group`] on `store`'s disk and data directory, with the group's shared
    /// repair source slot: a source set on the group's state also repairs what its log store reads.
    pub fn for_store(store: &crate::storage::store::Store, group: &str) -> Option<Self> {
        let mut cs = Self::for_group(store.disk().clone(), store.root(), group)?;
        cs.source = store.chunk_source_slot(group);
        Some(cs)
    }

    fn current_source(&self) -> Option<Arc<dyn ChunkSource>> {
        self.source.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sets where damaged chunks are repaired from, for this store, its clones and every store on
    /// the same [`SourceSlot`].
    pub fn set_source(&mut self, source: Arc<dyn ChunkSource>) {
        *self.source.write().unwrap_or_else(|p| p.into_inner()) = Some(source);
    }

    /// Chunks this store (and its clones) repaired since it was opened.
    pub fn repairs(&self) -> u64 {
        self.repairs.load(Ordering::Relaxed)
    }

    fn path(&self, h: &Hash) -> PathBuf {
        chunk_file(&self.dir, h)
    }

    fn legacy_path(&self, h: &Hash) -> Option<PathBuf> {
        self.legacy.as_ref().map(|d| chunk_file(d, h))
    }

    /// Whether a file for chunk `h` exists (in this namespace or, for a tenant, the legacy
    /// global one). Its bytes are not read.
    pub fn contains(&self, h: &Hash) -> bool {
        self.disk.exists(&self.path(h)) || self.legacy_path(h).is_some_and(|p| self.disk.exists(&p))
    }

    /// Writes a chunk durably unless it is already present and intact.
    pub fn put(&self, data: &[u8]) -> Result<Hash, ChunkError> {
        self.put_hashed(*blake3::hash(data).as_bytes(), data)
    }

    /// [`ChunkStore::put`] for bytes whose blake3 `h` the caller has just computed over these
    /// very bytes (the apply path checks a segment's hash, which for a one-chunk segment is its
    /// chunk's): saves hashing them again.
    pub fn put_hashed(&self, h: Hash, data: &[u8]) -> Result<Hash, ChunkError> {
        self.put_verified(h, data)?;
        Ok(h)
    }

    /// Whether a file for chunk `h` exists here (see [`ChunkStore::contains`]); its bytes are not
    /// read (the scrub and readers check those).
    pub fn present(&self, h: &Hash) -> bool {
        self.contains(h)
    }

    /// Fetches chunk `h`, which this replica never had (a snapshot install references it), from
    /// the source, verifies it and writes it as durably as any chunk write. Not a repair: the
    /// repair counter stays.
    pub async fn fetch_missing(&self, h: &Hash) -> Result<NodeId, ChunkError> {
        let failed = |why: String| ChunkError::Unrepaired { damage: ChunkError::Missing(hex(h)).to_string(), why };
        let source = self.current_source().ok_or_else(|| failed("this store has no peers to fetch from".into()))?;
        let Fetched { from, data } = source.fetch(*h).await.map_err(failed)?;
        if blake3::hash(&data).as_bytes() != h {
            return Err(failed(format!("node {from} sent bytes that do not match the chunk's blake3")));
        }
        blocking(|| self.write(h, &data))?;
        Ok(from)
    }

    /// [`ChunkStore::put_hashed`] that says whether it wrote (`true`) or found the chunk present
    /// and intact in this namespace (`false`).
    pub fn put_verified(&self, h: Hash, data: &[u8]) -> Result<bool, ChunkError> {
        let path = self.path(&h);
        if self.disk.exists(&path) && self.read_verified(&path, &h).is_ok() {
            return Ok(false);
        }
        self.write(&h, data)?;
        Ok(true)
    }

    fn read_verified(&self, path: &std::path::Path, h: &Hash) -> Result<Vec<u8>, ChunkError> {
        let data = match self.disk.read_file(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ChunkError::Missing(hex(h))),
            Err(e) => return Err(ChunkError::Io(e.to_string())),
        };
        if blake3::hash(&data).as_bytes() != h {
            return Err(ChunkError::Corrupt(hex(h)));
        }
        Ok(data)
    }

    /// Reads a chunk from this store's own namespace only (never the legacy global directory)
    /// and checks its hash: what a member may be sent of a tenant's chunks that no row references
    /// yet (a push by reference whose entry is being appended).
    pub fn get_own(&self, h: &Hash) -> Result<Vec<u8>, ChunkError> {
        self.read_verified(&self.path(h), h)
    }

    /// Reads a chunk and checks its hash. A tenant's store that lacks the chunk in its own
    /// namespace reads the legacy global directory and, when the copy there is intact, writes it
    /// into its own namespace (durably) before answering, so the old place is needed only once.
    pub fn get(&self, h: &Hash) -> Result<Vec<u8>, ChunkError> {
        match self.read_verified(&self.path(h), h) {
            Err(ChunkError::Missing(m)) => {
                let Some(old) = self.legacy_path(h) else { return Err(ChunkError::Missing(m)) };
                let data = self.read_verified(&old, h)?;
                self.write(h, &data)?;
                tracing::debug!(chunk = %hex(h), "chunk moved from the global directory into its tenant's");
                Ok(data)
            }
            other => other,
        }
    }

    /// Reads a chunk; a damaged copy (corrupt or missing) is first repaired from the source.
    /// Never returns bytes that fail the hash.
    pub async fn get_or_repair(&self, h: &Hash) -> Result<Vec<u8>, ChunkError> {
        match blocking(|| self.get(h)) {
            Err(damage @ (ChunkError::Corrupt(_) | ChunkError::Missing(_))) => {
                self.repair(h, damage).await.map(|(data, _)| data)
            }
            other => other,
        }
    }

    /// Verifies a chunk, repairing it from the source when it is damaged (the scrub).
    pub async fn check_or_repair(&self, h: &Hash) -> Result<Checked, ChunkError> {
        match blocking(|| self.get(h)) {
            Ok(_) => Ok(Checked::Intact),
            Err(damage @ (ChunkError::Corrupt(_) | ChunkError::Missing(_))) => {
                self.repair(h, damage).await.map(|(_, from)| Checked::Repaired { from })
            }
            Err(e) => Err(e),
        }
    }

    /// Fetches a healthy copy of `h`, verifies it and writes it durably over the damaged file.
    async fn repair(&self, h: &Hash, damage: ChunkError) -> Result<(Vec<u8>, NodeId), ChunkError> {
        let unrepaired = |why: String| ChunkError::Unrepaired { damage: damage.to_string(), why };
        let Some(source) = self.current_source() else {
            return Err(unrepaired("this store has no peers to repair from".into()));
        };
        let Fetched { from, data } = source.fetch(*h).await.map_err(unrepaired)?;
        if blake3::hash(&data).as_bytes() != h {
            return Err(unrepaired(format!("node {from} sent bytes that do not match the chunk's blake3")));
        }
        // The same write as `put`: temporary file, fdatasync, rename over the damaged file,
        // directory fsync. A concurrent repair or apply of the same chunk writes the same bytes.
        blocking(|| self.write(h, &data))?;
        self.repairs.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(chunk = %hex(h), from, was = %damage, "chunk repaired from a peer's copy");
        Ok((data, from))
    }

    fn write(&self, h: &Hash, data: &[u8]) -> Result<(), ChunkError> {
        debug_assert_eq!(blake3::hash(data).as_bytes(), h, "only verified bytes are written");
        let path = self.path(h);
        if let Some(parent) = path.parent() {
            self.disk.create_dir_all(parent).map_err(|e| ChunkError::Io(e.to_string()))?;
        }
        #[cfg(feature = "planted-bugs")]
        if crate::planted::on(crate::planted::Bug::AckBeforeChunks) {
            return crate::planted::write_without_sync(&self.disk, &path, data)
                .map_err(|e| ChunkError::Io(e.to_string()));
        }
        self.disk.write_file_durable(&path, data).map_err(|e| ChunkError::Io(e.to_string()))
    }
}

/// Splits a segment into chunk-sized pieces (the last may be shorter; an empty segment has none).
pub fn split(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.chunks(CHUNK_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seams::disk::{DiskEvent, OsDisk};

    #[test]
    fn hex_is_blake3s_lowercase_hex_and_parses_back() {
        for data in [&b""[..], b"wal", &[0xff; 100]] {
            let h = *blake3::hash(data).as_bytes();
            assert_eq!(hex(&h), blake3::Hash::from(h).to_hex().as_str());
            assert_eq!(parse_hex(&hex(&h)), Some(h));
        }
    }

    /// A peer that holds its own copies.
    struct Peer(ChunkStore, NodeId);

    impl ChunkSource for Peer {
        fn fetch(&self, hash: Hash) -> BoxFuture<'static, Result<Fetched, String>> {
            let got = self.0.get(&hash).map(|data| Fetched { from: self.1, data }).map_err(|e| e.to_string());
            Box::pin(async move { got })
        }
    }

    /// A peer that answers with the wrong bytes.
    struct Liar;

    impl ChunkSource for Liar {
        fn fetch(&self, _hash: Hash) -> BoxFuture<'static, Result<Fetched, String>> {
            Box::pin(async { Ok(Fetched { from: 9, data: b"not the chunk".to_vec() }) })
        }
    }

    fn rot_one_bit(store: &ChunkStore, h: &Hash) {
        let path = store.path(h);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[7] ^= 0x20;
        std::fs::write(&path, bytes).unwrap();
    }

    fn two_stores(dir: &std::path::Path) -> (ChunkStore, crate::seams::disk::DiskLog, ChunkStore) {
        let (disk, log) = OsDisk::recording();
        let mine = ChunkStore::new(Arc::new(disk), &dir.join("mine"));
        let peer = ChunkStore::new(Arc::new(OsDisk::new()), &dir.join("peer"));
        (mine, log, peer)
    }

    #[tokio::test]
    async fn a_rotten_chunk_is_repaired_from_a_healthy_copy_durably() {
        let dir = tempfile::tempdir().unwrap();
        let (mut mine, log, peer) = two_stores(dir.path());
        let data = b"wal bytes ".repeat(500);
        let h = mine.put(&data).unwrap();
        assert_eq!(peer.put(&data).unwrap(), h);
        rot_one_bit(&mine, &h);
        assert_eq!(mine.get(&h), Err(ChunkError::Corrupt(hex(&h))), "rot is detected");
        mine.set_source(Arc::new(Peer(peer, 4)));
        log.take();

        assert_eq!(mine.get_or_repair(&h).await.unwrap(), data, "the reader gets the healthy bytes");

        // The repair is a chunk write like any other: temporary file, fdatasync, rename over the
        // rotten file, directory fsync, and only then is the repair reported.
        let path = mine.path(&h);
        let events = log.take();
        let n = events.len();
        assert!(n >= 3, "{events:?}");
        let DiskEvent::Fdatasync(tmp) = &events[n - 3] else { panic!("no fdatasync before the rename: {events:?}") };
        assert_eq!(events[n - 2], DiskEvent::Rename { from: tmp.clone(), to: path.clone() }, "{events:?}");
        assert_eq!(events[n - 1], DiskEvent::FsyncDir(path.parent().unwrap().to_path_buf()), "{events:?}");
        assert_eq!(mine.get(&h).unwrap(), data, "the file on disk is whole again");
        assert_eq!(mine.repairs(), 1);
        assert_eq!(mine.check_or_repair(&h).await, Ok(Checked::Intact));
        assert_eq!(mine.repairs(), 1, "an intact chunk is not rewritten");
    }

    #[test]
    fn tenant_groups_name_their_tenant() {
        assert_eq!(ChunkStore::tenant_of_group("t/acme/3"), Some("acme"));
        assert_eq!(ChunkStore::tenant_of_group("t/a_b-c/0"), Some("a_b-c"));
        for other in ["meta", "t/acme", "t//3", "t/acme/x", "t/a/b/3", "x/acme/3"] {
            assert_eq!(ChunkStore::tenant_of_group(other), None, "{other}");
        }
    }

    #[test]
    fn a_tenant_finds_a_chunk_of_the_old_global_directory_and_moves_it_into_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let disk: DiskRef = Arc::new(OsDisk::new());
        // As the previous build wrote it: one directory for every tenant.
        let global = ChunkStore::new(disk.clone(), dir.path());
        let old = global.put(b"an old segment").unwrap();
        let acme = ChunkStore::for_tenant(disk.clone(), dir.path(), "acme");
        assert!(acme.contains(&old), "the legacy copy counts as present");
        assert!(!disk.exists(&acme.path(&old)));
        assert_eq!(acme.get(&old).unwrap(), b"an old segment");
        assert!(disk.exists(&acme.path(&old)), "the read copied it into the tenant's namespace");
        assert!(acme.path(&old).starts_with(dir.path().join("chunks").join("acme")));
        // A new write goes to the tenant's namespace only.
        let new = acme.put(b"a new segment").unwrap();
        assert!(disk.exists(&acme.path(&new)));
        assert_eq!(global.get(&new), Err(ChunkError::Missing(hex(&new))));
        // Another tenant has its own namespace (the legacy one is shared, as it was).
        let other = ChunkStore::for_tenant(disk.clone(), dir.path(), "other");
        assert!(!other.contains(&new));
        assert_eq!(other.get(&new), Err(ChunkError::Missing(hex(&new))));
        // A rotten legacy copy is reported as corrupt, never served or copied.
        let rotten = global.put(b"rots in the old place").unwrap();
        rot_one_bit(&global, &rotten);
        assert_eq!(acme.get(&rotten), Err(ChunkError::Corrupt(hex(&rotten))));
        assert!(!disk.exists(&acme.path(&rotten)));
    }

    #[tokio::test]
    async fn the_scrub_repairs_a_missing_chunk_and_says_from_where() {
        let dir = tempfile::tempdir().unwrap();
        let (mut mine, _log, peer) = two_stores(dir.path());
        let h = peer.put(b"only the peer has it").unwrap();
        mine.set_source(Arc::new(Peer(peer, 6)));
        assert_eq!(mine.check_or_repair(&h).await, Ok(Checked::Repaired { from: 6 }));
        assert_eq!(mine.get(&h).unwrap(), b"only the peer has it");
    }

    #[tokio::test]
    async fn bytes_that_fail_the_hash_are_neither_written_nor_served() {
        let dir = tempfile::tempdir().unwrap();
        let (mut mine, _log, _peer) = two_stores(dir.path());
        let h = mine.put(b"segment bytes").unwrap();
        rot_one_bit(&mine, &h);
        let rotten = std::fs::read(mine.path(&h)).unwrap();

        let e = mine.get_or_repair(&h).await.unwrap_err();
        assert!(matches!(&e, ChunkError::Unrepaired { damage, .. } if damage.contains("corrupt")), "{e}");

        mine.set_source(Arc::new(Liar));
        let e = mine.get_or_repair(&h).await.unwrap_err();
        assert!(e.to_string().contains("node 9 sent bytes that do not match"), "{e}");
        assert_eq!(std::fs::read(mine.path(&h)).unwrap(), rotten, "a lying peer's bytes are not written");
        assert_eq!(mine.repairs(), 0);
    }
}
