//! A tenant's WAL catalog: the replicated state of a tenant group.
//!
//! A `PutSegment` entry carries the segment's bytes, so the bytes are durable on a quorum as soon
//! as the entry is committed (the Raft log is fsync'd). Applying the entry splits the bytes into
//! content-addressed chunks written durably through the disk seam and records the segment.
//! Re-pushing an identical segment is a no-op that reports `already_present`; a different segment
//! under an existing name is refused and changes nothing.
//!
//! The catalog and its put decision are pure and live in `tetrad-core`
//! (`node/core/src/catalog.rs`); this module owns the log entry (whose bytes field has its own
//! encoding) and hashes the bytes for the decision.

use serde::{Deserialize, Serialize};
use tetrad_core::catalog::Put;
pub use tetrad_core::catalog::{
    validate_name, Catalog, NameError, PutDecision, SegmentRecord, TenantReply, MAX_NAME_BYTES, MAX_OBJECT_BYTES,
    MAX_SEGMENT_BYTES,
};
pub use tetrad_core::records::RecordOp;
use tetrad_core::LogPos;

use crate::storage::chunks::Hash;

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TenantCommand {
    PutSegment {
        name: String,
        blake3: Hash,
        #[serde(with = "crate::storage::byte_buf")]
        data: Vec<u8>,
        proposed_at_ms: u64,
    },
    /// A record write: puts and deletes of small values, each with an optional version
    /// condition, all or nothing (`tetrad_core::records`). Values ride inline: each is at most
    /// 1 MiB and a write at most 16 MiB, the bounds of one entry.
    Records { ops: Vec<RecordOp>, proposed_at_ms: u64 },
    /// A segment pushed by reference (`Writes::push_chunked`): its chunks were uploaded to the
    /// leader, verified, written durably there and sent to the group's members before this
    /// entry was proposed, and the entry carries only their hashes. Every replica appends it
    /// only once it holds each chunk durably (`raft/log_store.rs` fetches any it lacks), so a
    /// committed entry's bytes are durable on its quorum exactly as an inline put's. The chunks
    /// follow `chunks::split` (all full but the last), so a row's chunk list means what an
    /// inline put's does.
    PutSegmentRef { name: String, blake3: Hash, size: u64, chunks: Vec<Hash>, proposed_at_ms: u64 },
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
            TenantCommand::PutSegmentRef { name, size, chunks, .. } => {
                format!("put {name} by reference ({size} bytes, {} chunks)", chunks.len())
            }
            TenantCommand::Records { ops, .. } => match ops.as_slice() {
                [one] => format!("record {}", one.key()),
                many => format!("records ({} keys)", many.len()),
            },
        }
    }
}

/// Decides what a `PutSegment` of `data` at (term, index) does: hashes the bytes (and, for a
/// segment to store, each chunk) and asks the catalog's pure decision.
pub fn decide_put(
    catalog: &Catalog,
    name: &str,
    blake3: &Hash,
    data: &[u8],
    proposed_at_ms: u64,
    term: u64,
    index: u64,
) -> PutDecision {
    let actual: Hash = *::blake3::hash(data).as_bytes();
    let put =
        Put { name, blake3, actual: &actual, size: data.len() as u64, proposed_at_ms, at: LogPos::new(term, index) };
    catalog.decide_put(&put, || {
        // A segment of one chunk (nearly all WAL segments) has the chunk's hash: reuse it.
        if !data.is_empty() && data.len() <= crate::storage::chunks::CHUNK_BYTES {
            vec![actual]
        } else {
            crate::storage::chunks::split(data).map(|c| *::blake3::hash(c).as_bytes()).collect()
        }
    })
}

/// Checks that `chunks` is how `chunks::split` cuts an object of `size` bytes into chunks (every
/// chunk full but the last; none for an empty object), within [`MAX_OBJECT_BYTES`]: the layout a
/// push by reference must declare.
pub fn check_layout(size: u64, chunks: usize) -> Result<(), String> {
    if size > MAX_OBJECT_BYTES {
        return Err(format!("an object of {size} bytes exceeds the limit max_object_bytes = {MAX_OBJECT_BYTES}"));
    }
    let expected = size.div_ceil(crate::storage::chunks::CHUNK_BYTES as u64);
    if chunks as u64 != expected {
        return Err(format!(
            "{chunks} chunks declared for {size} bytes; chunks are {} bytes each (the last may be shorter), so {expected} were expected",
            crate::storage::chunks::CHUNK_BYTES
        ));
    }
    Ok(())
}

/// The length of chunk `i` of an object of `size` bytes cut by `chunks::split`.
pub fn chunk_len(size: u64, i: usize) -> usize {
    let c = crate::storage::chunks::CHUNK_BYTES as u64;
    (size - (i as u64) * c).min(c) as usize
}

/// Decides what a put whose bytes are already in chunk files does, from its record alone: a
/// sideloaded put (`raft/log_store.rs`) is stripped only when its bytes matched the claimed
/// blake3, so that claim is the bytes' hash, and its chunk hashes are the record's.
pub fn decide_put_by_ref(
    catalog: &Catalog,
    name: &str,
    blake3: &Hash,
    size: u64,
    chunks: &[Hash],
    proposed_at_ms: u64,
    at: LogPos,
) -> PutDecision {
    let put = Put { name, blake3, actual: blake3, size, proposed_at_ms, at };
    catalog.decide_put(&put, || chunks.to_vec())
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
        let PutDecision::Store(rec) = decide_put(&c, "000000010000000000000001", &h(&d), &d, 5, 1, 3) else {
            panic!("first put must store");
        };
        assert_eq!(rec.chunks, vec![h(&d)]);
        c.insert(rec);
        assert_eq!(
            decide_put(&c, "000000010000000000000001", &h(&d), &d, 6, 1, 4),
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
            decide_put(&c, "000000010000000000000001", &h(&other), &other, 7, 1, 5),
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
                matches!(decide_put(&c, bad, &h(&d), &d, 0, 1, 1), PutDecision::Reply(TenantReply::Invalid { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(decide_put(&c, "ok", &h(b"y"), &d, 0, 1, 1), PutDecision::Reply(TenantReply::Invalid { .. })));
    }

    #[test]
    fn large_segments_split_into_mebibyte_chunks() {
        let c = Catalog::default();
        let d = vec![7u8; (2 << 20) + 5];
        let PutDecision::Store(rec) = decide_put(&c, "big", &h(&d), &d, 0, 1, 1) else { panic!() };
        assert_eq!(rec.chunks.len(), 3);
        assert_eq!(rec.chunks[2], h(&d[2 << 20..]));
        assert_eq!(rec.size, d.len() as u64);
    }
}
