//! A tenant's WAL catalog and the decision a `PutSegment` entry makes when it is applied: store
//! a new segment, answer an idempotent retry, refuse a conflicting or invalid one. The node
//! hashes the bytes and writes the chunks (`node/src/tenant/catalog.rs`, `group_state.rs`).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::{Hash, LogPos};

/// Longest segment name accepted.
pub const MAX_NAME_BYTES: usize = 255;
/// Largest segment accepted in one push that carries its bytes in its log entry.
pub const MAX_SEGMENT_BYTES: u64 = 64 << 20;
/// Largest object (segment or file) accepted in a push by reference, whose chunks are uploaded
/// before an entry of their hashes is proposed: PostgreSQL's largest `wal_segment_size` and its
/// relation files' segment size are both 1 GiB.
pub const MAX_OBJECT_BYTES: u64 = 1 << 30;

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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TenantReply {
    Stored {
        already_present: bool,
        size: u64,
        blake3: Hash,
        index: u64,
        term: u64,
    },
    Conflict {
        existing: Hash,
        existing_size: u64,
    },
    Invalid {
        reason: String,
    },
    /// The answer to a record write (`node/core/src/records.rs`).
    Records(crate::records::RecordReply),
}

/// A segment name that is not a plain file name as PostgreSQL writes them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("segment name is empty")]
    Empty,
    #[error("segment name is longer than {MAX_NAME_BYTES} bytes")]
    TooLong,
    #[error("segment name {0:?} is not a plain file name")]
    NotPlain(String),
}

/// Checks a segment name: a plain file name as PostgreSQL writes them.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong);
    }
    if name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(NameError::NotPlain(name.to_string()));
    }
    Ok(())
}

/// The in-memory catalog (mirrored in the store's SEGMENTS table).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub segments: BTreeMap<String, SegmentRecord>,
    /// Total bytes of all segments (for lag in bytes).
    pub bytes: u64,
    /// How many references of the segments name each chunk: "the tenant holds this chunk" (a
    /// committed entry references it), what a push by reference may skip sending. Derived from
    /// `segments` by [`Catalog::insert`], never serialized.
    #[serde(skip)]
    refs: HashMap<Hash, u32>,
}

/// One `PutSegment` entry as applying it sees it: what the client claimed and what the bytes are.
#[derive(Clone, Copy, Debug)]
pub struct Put<'a> {
    pub name: &'a str,
    /// The blake3 the client sent.
    pub blake3: &'a Hash,
    /// The blake3 of the bytes the entry carries.
    pub actual: &'a Hash,
    pub size: u64,
    pub proposed_at_ms: u64,
    /// The entry's log position.
    pub at: LogPos,
}

/// What applying a put decided, before any I/O.
#[derive(Debug, PartialEq, Eq)]
pub enum PutDecision {
    /// Store the chunks and this record.
    Store(SegmentRecord),
    Reply(TenantReply),
}

impl Catalog {
    /// Decides what a put does. `chunk_hashes` gives the blake3 of each chunk of the bytes; it is
    /// called only when the segment is to be stored.
    pub fn decide_put(&self, put: &Put<'_>, chunk_hashes: impl FnOnce() -> Vec<Hash>) -> PutDecision {
        if let Err(e) = validate_name(put.name) {
            return PutDecision::Reply(TenantReply::Invalid { reason: e.to_string() });
        }
        if put.actual != put.blake3 {
            return PutDecision::Reply(TenantReply::Invalid {
                reason: "segment bytes do not match their blake3".into(),
            });
        }
        if let Some(existing) = self.segments.get(put.name) {
            if &existing.blake3 == put.blake3 {
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
        PutDecision::Store(SegmentRecord {
            name: put.name.to_string(),
            size: put.size,
            blake3: *put.blake3,
            chunks: chunk_hashes(),
            proposed_at_ms: put.proposed_at_ms,
            term: put.at.term,
            index: put.at.index,
        })
    }

    pub fn insert(&mut self, rec: SegmentRecord) {
        self.bytes += rec.size;
        for h in &rec.chunks {
            *self.refs.entry(*h).or_default() += 1;
        }
        if let Some(old) = self.segments.insert(rec.name.clone(), rec) {
            self.bytes -= old.size;
            for h in &old.chunks {
                if let Some(n) = self.refs.get_mut(h) {
                    *n -= 1;
                    if *n == 0 {
                        self.refs.remove(h);
                    }
                }
            }
        }
    }

    /// Whether a segment of this catalog references chunk `h`.
    pub fn holds_chunk(&self, h: &Hash) -> bool {
        self.refs.contains_key(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(b: u8) -> Hash {
        [b; 32]
    }

    fn put<'a>(name: &'a str, claimed: &'a Hash, actual: &'a Hash, index: u64) -> Put<'a> {
        Put { name, blake3: claimed, actual, size: 13, proposed_at_ms: 5, at: LogPos::new(1, index) }
    }

    #[test]
    fn put_then_identical_put_then_conflicting_put() {
        let mut c = Catalog::default();
        let (d, other) = (h(1), h(2));
        let PutDecision::Store(rec) = c.decide_put(&put("000000010000000000000001", &d, &d, 3), || vec![d]) else {
            panic!("first put must store");
        };
        assert_eq!(
            rec,
            SegmentRecord {
                name: "000000010000000000000001".into(),
                size: 13,
                blake3: d,
                chunks: vec![d],
                proposed_at_ms: 5,
                term: 1,
                index: 3
            }
        );
        c.insert(rec);
        assert_eq!(c.bytes, 13);
        let never = || panic!("no chunks are hashed for a put that stores nothing");
        assert_eq!(
            c.decide_put(&put("000000010000000000000001", &d, &d, 4), never),
            PutDecision::Reply(TenantReply::Stored { already_present: true, size: 13, blake3: d, index: 3, term: 1 })
        );
        assert_eq!(
            c.decide_put(&put("000000010000000000000001", &other, &other, 5), never),
            PutDecision::Reply(TenantReply::Conflict { existing: d, existing_size: 13 })
        );
        assert_eq!(c.segments.len(), 1);
    }

    #[test]
    fn the_catalog_knows_which_chunks_its_segments_reference() {
        let mut c = Catalog::default();
        let rec = |name: &str, chunks: Vec<Hash>| SegmentRecord {
            name: name.into(),
            size: 13,
            blake3: h(9),
            chunks,
            proposed_at_ms: 0,
            term: 1,
            index: 1,
        };
        c.insert(rec("a", vec![h(1), h(2)]));
        c.insert(rec("b", vec![h(2), h(3)]));
        assert!([h(1), h(2), h(3)].iter().all(|x| c.holds_chunk(x)));
        assert!(!c.holds_chunk(&h(4)));
        // A row replaced (a snapshot install rebuilds rows) drops the references it made.
        c.insert(rec("a", vec![h(4)]));
        assert!(!c.holds_chunk(&h(1)) && c.holds_chunk(&h(2)) && c.holds_chunk(&h(4)));
        assert_eq!(c.bytes, 26);
    }

    #[test]
    fn bad_names_and_mismatched_hashes_are_refused() {
        let c = Catalog::default();
        let d = h(1);
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(
                matches!(c.decide_put(&put(bad, &d, &d, 1), Vec::new), PutDecision::Reply(TenantReply::Invalid { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(
            c.decide_put(&put("ok", &h(2), &d, 1), Vec::new),
            PutDecision::Reply(TenantReply::Invalid { reason: "segment bytes do not match their blake3".into() })
        );
    }

    #[test]
    fn name_errors_say_what_is_wrong() {
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(
            validate_name(&"x".repeat(256)).map_err(|e| e.to_string()),
            Err("segment name is longer than 255 bytes".into())
        );
        assert_eq!(
            validate_name("a/b").map_err(|e| e.to_string()),
            Err("segment name \"a/b\" is not a plain file name".into())
        );
        assert_eq!(validate_name(&"x".repeat(255)), Ok(()));
    }
}
