//! WAL segments for the tests: PostgreSQL-like names and pseudo-random bytes.
//!
//! The bytes are blake3's extendable output for a seed: as good as random for the server, fast
//! to make, and reproducible, so a segment whose push must be retried can be made again from its
//! seed instead of being kept on disk.

use std::path::{Path, PathBuf};

/// PostgreSQL's segment name for segment number `n` of timeline 1 with 16 MiB segments: 24 hex
/// digits, timeline, log and segment (`00000001` `0000000A` `000000FF`).
pub fn segment_name(n: u64) -> String {
    format!("{:08X}{:08X}{:08X}", 1, n / 256, n % 256)
}

/// `size` pseudo-random bytes determined by `seed`.
pub fn segment_bytes(seed: &str, size: usize) -> Vec<u8> {
    let mut bytes = vec![0; size];
    blake3::Hasher::new_derive_key("tetrad-tests segment bytes")
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut bytes);
    bytes
}

/// blake3 of `bytes`, lowercase hex (the form tetrad prints).
pub fn blake3_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// blake3 of a file's contents, lowercase hex.
pub fn file_blake3(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    blake3_hex(&bytes)
}

/// What a segment must look like when it is fetched back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub name: String,
    pub size: u64,
    pub blake3: String,
}

impl Expected {
    pub fn of(name: &str, bytes: &[u8]) -> Self {
        Self { name: name.to_owned(), size: bytes.len() as u64, blake3: blake3_hex(bytes) }
    }
}

/// Writes `bytes` as `dir/name` (the segment's name is its file name, as for `wal push`).
pub fn write_segment(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_look_like_postgresql_segments() {
        assert_eq!(segment_name(1), "000000010000000000000001");
        assert_eq!(segment_name(0x1FF), "0000000100000001000000FF");
        assert_eq!(segment_name(7).len(), 24);
    }

    #[test]
    fn bytes_depend_on_the_seed_only() {
        assert_eq!(segment_bytes("a", 100), segment_bytes("a", 100));
        assert_ne!(segment_bytes("a", 100), segment_bytes("b", 100));
        assert_eq!(segment_bytes("a", 1000)[..100], segment_bytes("a", 100)[..]);
    }
}
