//! A tenant's WAL catalog: the replicated state of a tenant group.
//!
//! A `PutSegment` entry carries the segment's bytes, so the bytes are durable on a quorum as soon
//! as the entry is committed (the Raft log is fsync'd). Applying the entry splits the bytes into
//! content-addressed chunks written durably through the disk seam and records the segment.
//! Re-pushing an identical segment is a no-op that reports `already_present`; a different segment
//! under an existing name is refused and changes nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::storage::chunks::Hash;

/// Longest segment name accepted.
pub const MAX_NAME_BYTES: usize = 255;
/// Largest segment accepted in one push.
pub const MAX_SEGMENT_BYTES: u64 = 64 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRecord {
    pub name: String,
    pub size: u64,
    pub blake3: Hash,
    pub chunks: Vec<Hash>,
    /// Leader's wall clock when the write was proposed (ms since the Unix epoch).
    pub proposed_at_ms: u64,
    pub term: u64,
    pub index: u64,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TenantCommand {
    PutSegment {
        name: String,
        blake3: Hash,
        #[serde(with = "crate::storage::byte_buf")]
        data: Vec<u8>,
        proposed_at_ms: u64,
    },
}

impl std::fmt::Debug for TenantCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary())
    }
}

impl TenantCommand {
    pub fn summary(&self) -> String {
        match self {
            TenantCommand::PutSegment { name, data, .. } => format!("put {name} ({} bytes)", data.len()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TenantReply {
    Stored { already_present: bool, size: u64, blake3: Hash, index: u64, term: u64 },
    Conflict { existing: Hash, existing_size: u64 },
    Invalid { reason: String },
}

/// Checks a segment name: a plain file name as PostgreSQL writes them.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("segment name is empty".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!("segment name is longer than {MAX_NAME_BYTES} bytes"));
    }
    if name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(format!("segment name {name:?} is not a plain file name"));
    }
    Ok(())
}

/// The in-memory catalog (mirrored in the store's SEGMENTS table).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub segments: BTreeMap<String, SegmentRecord>,
    /// Total bytes of all segments (for lag in bytes).
    pub bytes: u64,
}

/// What applying a put decided, before any I/O.
#[derive(Debug, PartialEq, Eq)]
pub enum PutDecision {
    /// Store the chunks and this record.
    Store(SegmentRecord),
    Reply(TenantReply),
}

impl Catalog {
    /// Decides what a `PutSegment` at (term, index) does. Pure.
    pub fn decide_put(
        &self,
        name: &str,
        blake3: &Hash,
        data: &[u8],
        proposed_at_ms: u64,
        term: u64,
        index: u64,
    ) -> PutDecision {
        if let Err(reason) = validate_name(name) {
            return PutDecision::Reply(TenantReply::Invalid { reason });
        }
        let actual: Hash = *::blake3::hash(data).as_bytes();
        if &actual != blake3 {
            return PutDecision::Reply(TenantReply::Invalid {
                reason: "segment bytes do not match their blake3".into(),
            });
        }
        if let Some(existing) = self.segments.get(name) {
            if &existing.blake3 == blake3 {
                return PutDecision::Reply(TenantReply::Stored {
                    already_present: true,
                    size: existing.size,
                    blake3: existing.blake3,
                    index: existing.index,
                    term: existing.term,
                });
            }
            return PutDecision::Reply(TenantReply::Conflict {
                existing: existing.blake3,
                existing_size: existing.size,
            });
        }
        // A segment of one chunk (nearly all WAL segments) has the chunk's hash: reuse it.
        let chunks = if !data.is_empty() && data.len() <= crate::storage::chunks::CHUNK_BYTES {
            vec![actual]
        } else {
            crate::storage::chunks::split(data).map(|c| *::blake3::hash(c).as_bytes()).collect()
        };
        PutDecision::Store(SegmentRecord {
            name: name.to_string(),
            size: data.len() as u64,
            blake3: *blake3,
            chunks,
            proposed_at_ms,
            term,
            index,
        })
    }

    pub fn insert(&mut self, rec: SegmentRecord) {
        self.bytes += rec.size;
        self.segments.insert(rec.name.clone(), rec);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(d: &[u8]) -> Hash {
        *::blake3::hash(d).as_bytes()
    }

    #[test]
    fn put_then_identical_put_then_conflicting_put() {
        let mut c = Catalog::default();
        let d = b"segment-bytes".to_vec();
        let PutDecision::Store(rec) = c.decide_put("000000010000000000000001", &h(&d), &d, 5, 1, 3) else {
            panic!("first put must store");
        };
        assert_eq!(rec.chunks, vec![h(&d)]);
        c.insert(rec);
        assert_eq!(
            c.decide_put("000000010000000000000001", &h(&d), &d, 6, 1, 4),
            PutDecision::Reply(TenantReply::Stored {
                already_present: true,
                size: d.len() as u64,
                blake3: h(&d),
                index: 3,
                term: 1
            })
        );
        let other = b"other".to_vec();
        assert_eq!(
            c.decide_put("000000010000000000000001", &h(&other), &other, 7, 1, 5),
            PutDecision::Reply(TenantReply::Conflict { existing: h(&d), existing_size: d.len() as u64 })
        );
        assert_eq!(c.segments.len(), 1);
    }

    #[test]
    fn bad_names_and_mismatched_hashes_are_refused() {
        let c = Catalog::default();
        let d = b"x".to_vec();
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(
                matches!(c.decide_put(bad, &h(&d), &d, 0, 1, 1), PutDecision::Reply(TenantReply::Invalid { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(c.decide_put("ok", &h(b"y"), &d, 0, 1, 1), PutDecision::Reply(TenantReply::Invalid { .. })));
    }

    #[test]
    fn large_segments_split_into_mebibyte_chunks() {
        let c = Catalog::default();
        let d = vec![7u8; (2 << 20) + 5];
        let PutDecision::Store(rec) = c.decide_put("big", &h(&d), &d, 0, 1, 1) else { panic!() };
        assert_eq!(rec.chunks.len(), 3);
        assert_eq!(rec.size, d.len() as u64);
    }
}
