//! Content-addressed chunk files: WAL bytes, named by their blake3 hash.
//!
//! A chunk is written once through the disk seam (durably: file fdatasync'd, directory fsync'd)
//! and never changed. Reads verify the hash, so bit rot is reported, never served.

use std::path::PathBuf;
use std::sync::Arc;

use crate::seams::disk::DiskRef;

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
}

pub fn hex(h: &Hash) -> String {
    let mut s = String::with_capacity(64);
    for b in h {
        s.push_str(&format!("{b:02x}"));
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

#[derive(Debug, Clone)]
pub struct ChunkStore {
    disk: DiskRef,
    dir: Arc<PathBuf>,
}

impl ChunkStore {
    pub fn new(disk: DiskRef, root: &std::path::Path) -> Self {
        Self { disk, dir: Arc::new(root.join("chunks")) }
    }

    fn path(&self, h: &Hash) -> PathBuf {
        let x = hex(h);
        self.dir.join(&x[..2]).join(x)
    }

    /// Writes a chunk durably unless it is already present and intact.
    pub fn put(&self, data: &[u8]) -> Result<Hash, ChunkError> {
        let h: Hash = *blake3::hash(data).as_bytes();
        let path = self.path(&h);
        if self.disk.exists(&path) && self.get(&h).is_ok() {
            return Ok(h);
        }
        if let Some(parent) = path.parent() {
            self.disk.create_dir_all(parent).map_err(|e| ChunkError::Io(e.to_string()))?;
        }
        self.disk.write_file_durable(&path, data).map_err(|e| ChunkError::Io(e.to_string()))?;
        Ok(h)
    }

    /// Reads a chunk and checks its hash.
    pub fn get(&self, h: &Hash) -> Result<Vec<u8>, ChunkError> {
        let data = match self.disk.read_file(&self.path(h)) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ChunkError::Missing(hex(h))),
            Err(e) => return Err(ChunkError::Io(e.to_string())),
        };
        if blake3::hash(&data).as_bytes() != h {
            return Err(ChunkError::Corrupt(hex(h)));
        }
        Ok(data)
    }
}

/// Splits a segment into chunk-sized pieces (the last may be shorter; an empty segment has none).
pub fn split(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.chunks(CHUNK_BYTES)
}
