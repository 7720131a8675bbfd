//! A tenant's record table: small values under UTF-8 keys, and the decision a record write
//! (one entry of puts and deletes, each with an optional version condition) makes when it is
//! applied. The node stores the rows and carries the decision out
//! (`node/src/tenant/group_state.rs`).
//!
//! Versions. Every change of a key gives it a version that no change of any key of the tenant
//! ever had before, in any epoch: `epoch << VERSION_EPOCH_SHIFT | sequence`, where the epoch is
//! the one of the group that applies the change and the sequence continues the table's newest
//! version. Within one epoch every replica applies the same committed entries in the same order
//! from the same state, so they compute the same versions. A promoted epoch starts from one
//! replica's state (seeded, ARCHITECTURE.md "Records") and its first change jumps to its own
//! epoch's range, above every version any earlier epoch could have handed out, including the
//! acked changes that the failover lost: so a condition a client took from a lost write can
//! never match a different value.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::LogPos;

/// Longest record key accepted, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest record value accepted (larger data goes through segments and chunks).
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Most records one write may put or delete.
pub const MAX_BATCH_RECORDS: usize = 10_000;
/// Most key and value bytes one write may carry (it is one Raft entry).
pub const MAX_BATCH_BYTES: usize = 16 << 20;
/// Most key and value bytes a tenant's records may hold: the table lives in memory and in every
/// snapshot, so it is bounded (larger data goes through segments, which are chunked).
pub const MAX_TABLE_BYTES: u64 = 256 << 20;
/// The version's low bits count changes within an epoch; the high bits are the epoch.
pub const VERSION_EPOCH_SHIFT: u32 = 40;
/// Most changes one epoch can version (2^40, about 10^12).
pub const MAX_SEQUENCE: u64 = (1 << VERSION_EPOCH_SHIFT) - 1;
/// Highest epoch a version can carry (2^24 - 1 failovers).
pub const MAX_EPOCH: u64 = (1 << (64 - VERSION_EPOCH_SHIFT)) - 1;

/// The first version a change applied in `epoch` may get.
pub fn epoch_floor(epoch: u64) -> u64 {
    assert!((1..=MAX_EPOCH).contains(&epoch), "epoch {epoch} out of the version's range");
    epoch << VERSION_EPOCH_SHIFT
}

/// The epoch a version was handed out in.
pub fn version_epoch(version: u64) -> u64 {
    version >> VERSION_EPOCH_SHIFT
}

/// One key's current value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordRow {
    pub key: String,
    pub value: Vec<u8>,
    pub version: u64,
    /// The version this change replaced (0: the key was absent). A conditional put retried after
    /// "outcome unknown" is recognised by it (see [`RecordTable::decide`]).
    pub prev_version: u64,
    /// The leader's wall clock when the write was proposed (ms since the Unix epoch).
    pub proposed_at_ms: u64,
    /// The log position of the entry that made the change (in the epoch that proposed it).
    pub term: u64,
    pub index: u64,
}

impl RecordRow {
    /// Key and value bytes, what the table's bound counts.
    pub fn bytes(&self) -> u64 {
        (self.key.len() + self.value.len()) as u64
    }
}

/// One operation of a record write. `if_version`: `None` is unconditional; `Some(0)` requires
/// the key to be absent; `Some(n)` requires the key to hold version `n`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordOp {
    Put { key: String, value: Vec<u8>, if_version: Option<u64> },
    Delete { key: String, if_version: Option<u64> },
}

impl RecordOp {
    pub fn key(&self) -> &str {
        match self {
            RecordOp::Put { key, .. } | RecordOp::Delete { key, .. } => key,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            RecordOp::Put { key, value, .. } => key.len() + value.len(),
            RecordOp::Delete { key, .. } => key.len(),
        }
    }
}

/// What one operation of a write that succeeded did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordOutcome {
    /// The key holds the value at `version`. `changed` is false when it already did (an
    /// identical unconditional put, or the retry of a conditional put that had succeeded).
    Put { key: String, version: u64, changed: bool },
    /// The key is absent. `version`: the version that was deleted (0 when it was absent already).
    Deleted { key: String, version: u64 },
}

/// The answer to a record write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordReply {
    /// Every operation succeeded, in request order.
    Done(Vec<RecordOutcome>),
    /// A condition did not hold; nothing of the write changed. `current`: the key's version
    /// (0: absent).
    ConditionFailed { key: String, expected: u64, current: u64 },
    /// The write is malformed or too large; nothing changed.
    Invalid { reason: String },
}

/// A key or value the table refuses, naming the limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record key is empty")]
    EmptyKey,
    #[error("record key is {0} bytes, longer than the limit of {MAX_KEY_BYTES} bytes")]
    KeyTooLong(usize),
    #[error("record key contains a NUL byte")]
    NulInKey,
    #[error("record value is {0} bytes, larger than the limit of {MAX_VALUE_BYTES} bytes (larger data goes through segments)")]
    ValueTooLarge(usize),
    #[error("a record write is empty")]
    EmptyWrite,
    #[error("a record write holds {0} records, more than the limit of {MAX_BATCH_RECORDS}")]
    TooManyRecords(usize),
    #[error("a record write carries {0} bytes, more than the limit of {MAX_BATCH_BYTES} bytes")]
    WriteTooLarge(usize),
    #[error("record key {0:?} appears twice in one write")]
    DuplicateKey(String),
    #[error("the tenant's records would hold {0} bytes, more than the limit of {MAX_TABLE_BYTES} bytes")]
    TableFull(u64),
}

/// Checks a key: non-empty UTF-8 (the type guarantees it) of at most [`MAX_KEY_BYTES`], no NUL
/// (it may contain `/`).
pub fn validate_key(key: &str) -> Result<(), RecordError> {
    if key.is_empty() {
        return Err(RecordError::EmptyKey);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(RecordError::KeyTooLong(key.len()));
    }
    if key.contains('\0') {
        return Err(RecordError::NulInKey);
    }
    Ok(())
}

/// Checks a value's size, before its bytes are read or copied anywhere.
pub fn validate_value_len(len: usize) -> Result<(), RecordError> {
    if len > MAX_VALUE_BYTES {
        return Err(RecordError::ValueTooLarge(len));
    }
    Ok(())
}

/// Checks a whole write's shape (sizes, keys, duplicates), without the table.
pub fn validate_write(ops: &[RecordOp]) -> Result<(), RecordError> {
    if ops.is_empty() {
        return Err(RecordError::EmptyWrite);
    }
    if ops.len() > MAX_BATCH_RECORDS {
        return Err(RecordError::TooManyRecords(ops.len()));
    }
    let total: usize = ops.iter().map(RecordOp::bytes).sum();
    if total > MAX_BATCH_BYTES {
        return Err(RecordError::WriteTooLarge(total));
    }
    let mut seen = std::collections::BTreeSet::new();
    for op in ops {
        validate_key(op.key())?;
        if let RecordOp::Put { value, .. } = op {
            validate_value_len(value.len())?;
        }
        if !seen.insert(op.key()) {
            return Err(RecordError::DuplicateKey(op.key().to_string()));
        }
    }
    Ok(())
}

/// One change a decided write makes to the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Set(RecordRow),
    Remove { key: String },
}

/// What applying a record write decided, before any I/O: the reply and the changes (empty
/// unless the reply is `Done`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordDecision {
    pub reply: RecordReply,
    pub changes: Vec<Change>,
}

/// The in-memory record table of a tenant group (mirrored in the store's RECORDS table, its
/// counters in the group's KV).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordTable {
    pub rows: BTreeMap<String, RecordRow>,
    /// The newest version handed out (0: none yet).
    pub last_version: u64,
    /// Changes ever applied in this tenant's lineage (every put that changed a key, every delete
    /// of a present key): the writes loss accounting counts.
    pub writes: u64,
    /// Key and value bytes of all rows.
    pub bytes: u64,
}

/// The table's counters, as stored beside the rows and carried by snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordCounters {
    pub last_version: u64,
    pub writes: u64,
}

impl RecordTable {
    /// A table of `rows` with `counters`, checking that no row's version is above the newest.
    pub fn from_rows(rows: impl IntoIterator<Item = RecordRow>, counters: RecordCounters) -> Result<Self, String> {
        let mut t = RecordTable { last_version: counters.last_version, writes: counters.writes, ..Default::default() };
        for row in rows {
            if row.version > t.last_version || row.version == 0 {
                return Err(format!(
                    "record {:?} has version {} but the table's newest is {}",
                    row.key, row.version, t.last_version
                ));
            }
            t.bytes += row.bytes();
            t.rows.insert(row.key.clone(), row);
        }
        Ok(t)
    }

    pub fn counters(&self) -> RecordCounters {
        RecordCounters { last_version: self.last_version, writes: self.writes }
    }

    /// The version of `key` now (0: absent).
    pub fn version_of(&self, key: &str) -> u64 {
        self.rows.get(key).map_or(0, |r| r.version)
    }

    /// Decides a write applied by a group of `epoch` at log position `at`. All or nothing: the
    /// first condition that fails refuses the whole write.
    ///
    /// A put with `if_version: Some(n)` succeeds when the key holds version `n` (absent for 0);
    /// it also answers success, changing nothing, when the key holds exactly these bytes at a
    /// version whose change replaced `n`: that is the put itself, committed earlier and now
    /// retried after "outcome unknown" (or an identical write with the same condition, which is
    /// indistinguishable from it). A put whose key already holds these bytes changes nothing and
    /// keeps the version. A delete of an absent key changes nothing; a conditional one fails
    /// unless its condition is 0.
    pub fn decide(&self, epoch: u64, ops: &[RecordOp], proposed_at_ms: u64, at: LogPos) -> RecordDecision {
        let refuse = |reply| RecordDecision { reply, changes: vec![] };
        if let Err(e) = validate_write(ops) {
            return refuse(RecordReply::Invalid { reason: e.to_string() });
        }
        let mut next = self.last_version.max(epoch_floor(epoch) - 1);
        let mut outcomes = Vec::with_capacity(ops.len());
        let mut changes = vec![];
        let mut bytes = self.bytes;
        for op in ops {
            let cur = self.rows.get(op.key());
            let current = cur.map_or(0, |r| r.version);
            match op {
                RecordOp::Put { key, value, if_version } => {
                    let same = cur.is_some_and(|r| &r.value == value);
                    let ok = match if_version {
                        None => true,
                        Some(n) => *n == current || (same && cur.is_some_and(|r| r.prev_version == *n)),
                    };
                    if !ok {
                        return refuse(RecordReply::ConditionFailed {
                            key: key.clone(),
                            expected: if_version.unwrap_or(0),
                            current,
                        });
                    }
                    if same {
                        outcomes.push(RecordOutcome::Put { key: key.clone(), version: current, changed: false });
                        continue;
                    }
                    next += 1;
                    assert!(next & MAX_SEQUENCE != 0 || next == epoch_floor(epoch), "version sequence overflowed");
                    assert_eq!(version_epoch(next), epoch, "version sequence ran into the next epoch's range");
                    let row = RecordRow {
                        key: key.clone(),
                        value: value.clone(),
                        version: next,
                        prev_version: current,
                        proposed_at_ms,
                        term: at.term,
                        index: at.index,
                    };
                    bytes = bytes - cur.map_or(0, RecordRow::bytes) + row.bytes();
                    outcomes.push(RecordOutcome::Put { key: key.clone(), version: next, changed: true });
                    changes.push(Change::Set(row));
                }
                RecordOp::Delete { key, if_version } => {
                    let ok = match if_version {
                        None => true,
                        Some(n) => *n == current,
                    };
                    if !ok {
                        return refuse(RecordReply::ConditionFailed {
                            key: key.clone(),
                            expected: if_version.unwrap_or(0),
                            current,
                        });
                    }
                    outcomes.push(RecordOutcome::Deleted { key: key.clone(), version: current });
                    if let Some(r) = cur {
                        bytes -= r.bytes();
                        changes.push(Change::Remove { key: key.clone() });
                    }
                }
            }
        }
        if bytes > MAX_TABLE_BYTES && bytes > self.bytes {
            return refuse(RecordReply::Invalid { reason: RecordError::TableFull(bytes).to_string() });
        }
        RecordDecision { reply: RecordReply::Done(outcomes), changes }
    }

    /// Carries out the changes of a decision made on this table.
    pub fn apply(&mut self, changes: &[Change]) {
        for c in changes {
            match c {
                Change::Set(row) => {
                    assert!(
                        row.version > self.last_version,
                        "versions only grow: {} after {}",
                        row.version,
                        self.last_version
                    );
                    self.last_version = row.version;
                    if let Some(old) = self.rows.insert(row.key.clone(), row.clone()) {
                        assert_eq!(old.version, row.prev_version, "a change replaces the version it was decided on");
                        self.bytes -= old.bytes();
                    }
                    self.bytes += row.bytes();
                }
                Change::Remove { key } => {
                    let old = self.rows.remove(key).expect("a delete decided on a present key");
                    self.bytes -= old.bytes();
                }
            }
            self.writes += 1;
        }
    }

    /// At most `limit` (at least 1) rows whose keys start with `prefix` and sort after `after`
    /// (from the first when `after` is empty or sorts before `prefix`), and the token of the
    /// next page (the page's last key) when another matching row follows.
    pub fn page(&self, prefix: &str, after: &str, limit: usize) -> (Vec<&RecordRow>, Option<String>) {
        crate::paging::page(&self.rows, prefix, after, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &[u8], if_version: Option<u64>) -> RecordOp {
        RecordOp::Put { key: key.into(), value: value.to_vec(), if_version }
    }

    fn del(key: &str, if_version: Option<u64>) -> RecordOp {
        RecordOp::Delete { key: key.into(), if_version }
    }

    /// Decides and applies one write; returns the reply.
    fn write(t: &mut RecordTable, epoch: u64, ops: &[RecordOp], index: u64) -> RecordReply {
        let d = t.decide(epoch, ops, 7, LogPos::new(1, index));
        t.apply(&d.changes);
        d.reply
    }

    const E1: u64 = 1 << VERSION_EPOCH_SHIFT;

    #[test]
    fn conditional_puts_and_deletes() {
        let mut t = RecordTable::default();
        assert_eq!(
            write(&mut t, 1, &[put("a/b", b"x", Some(0))], 1),
            RecordReply::Done(vec![RecordOutcome::Put { key: "a/b".into(), version: E1, changed: true }])
        );
        assert_eq!(
            write(&mut t, 1, &[put("a/b", b"y", Some(0))], 2),
            RecordReply::ConditionFailed { key: "a/b".into(), expected: 0, current: E1 }
        );
        assert_eq!(
            write(&mut t, 1, &[put("a/b", b"y", Some(E1))], 3),
            RecordReply::Done(vec![RecordOutcome::Put { key: "a/b".into(), version: E1 + 1, changed: true }])
        );
        assert_eq!(
            write(&mut t, 1, &[del("a/b", Some(E1))], 4),
            RecordReply::ConditionFailed { key: "a/b".into(), expected: E1, current: E1 + 1 }
        );
        assert_eq!(
            write(&mut t, 1, &[del("a/b", Some(E1 + 1))], 5),
            RecordReply::Done(vec![RecordOutcome::Deleted { key: "a/b".into(), version: E1 + 1 }])
        );
        assert!(t.rows.is_empty());
        assert_eq!((t.writes, t.last_version, t.bytes), (3, E1 + 1, 0));
        assert_eq!(
            write(&mut t, 1, &[del("a/b", Some(5))], 6),
            RecordReply::ConditionFailed { key: "a/b".into(), expected: 5, current: 0 }
        );
        assert_eq!(
            write(&mut t, 1, &[del("a/b", None)], 7),
            RecordReply::Done(vec![RecordOutcome::Deleted { key: "a/b".into(), version: 0 }])
        );
        // Put again after a delete: a new version, never the deleted one.
        assert_eq!(
            write(&mut t, 1, &[put("a/b", b"x", Some(0))], 8),
            RecordReply::Done(vec![RecordOutcome::Put { key: "a/b".into(), version: E1 + 2, changed: true }])
        );
        assert_eq!(t.writes, 4);
    }

    #[test]
    fn a_retried_conditional_put_is_recognised_and_a_different_one_is_not() {
        let mut t = RecordTable::default();
        write(&mut t, 1, &[put("k", b"v1", None)], 1);
        let d = t.decide(1, &[put("k", b"v2", Some(E1))], 0, LogPos::new(1, 2));
        t.apply(&d.changes);
        // The same put again, as after "outcome unknown": success, at the version it created.
        assert_eq!(
            write(&mut t, 1, &[put("k", b"v2", Some(E1))], 3),
            RecordReply::Done(vec![RecordOutcome::Put { key: "k".into(), version: E1 + 1, changed: false }])
        );
        // Other bytes under the same stale condition: refused with the current version.
        assert_eq!(
            write(&mut t, 1, &[put("k", b"v3", Some(E1))], 4),
            RecordReply::ConditionFailed { key: "k".into(), expected: E1, current: E1 + 1 }
        );
        // Once the key moved on, the old retry no longer matches.
        write(&mut t, 1, &[put("k", b"v4", None)], 5);
        assert_eq!(
            write(&mut t, 1, &[put("k", b"v2", Some(E1))], 6),
            RecordReply::ConditionFailed { key: "k".into(), expected: E1, current: E1 + 2 }
        );
        // An identical unconditional put changes nothing.
        assert_eq!(
            write(&mut t, 1, &[put("k", b"v4", None)], 7),
            RecordReply::Done(vec![RecordOutcome::Put { key: "k".into(), version: E1 + 2, changed: false }])
        );
        assert_eq!(t.writes, 3);
    }

    #[test]
    fn a_batch_is_all_or_nothing() {
        let mut t = RecordTable::default();
        write(&mut t, 1, &[put("a", b"1", None)], 1);
        let before = t.clone();
        assert_eq!(
            write(&mut t, 1, &[put("b", b"2", Some(0)), put("a", b"3", Some(0))], 2),
            RecordReply::ConditionFailed { key: "a".into(), expected: 0, current: E1 }
        );
        assert_eq!(t, before);
        assert_eq!(
            write(&mut t, 1, &[put("b", b"2", Some(0)), put("a", b"3", Some(E1)), del("c", None)], 3),
            RecordReply::Done(vec![
                RecordOutcome::Put { key: "b".into(), version: E1 + 1, changed: true },
                RecordOutcome::Put { key: "a".into(), version: E1 + 2, changed: true },
                RecordOutcome::Deleted { key: "c".into(), version: 0 },
            ])
        );
    }

    #[test]
    fn a_new_epoch_versions_above_every_earlier_epoch() {
        let mut t = RecordTable::default();
        for i in 1..=5 {
            write(&mut t, 1, &[put("k", &[i], None)], i as u64);
        }
        // Epoch 1 handed out E1..E1+4; the copy a promotion starts from may lack the last ones
        // (a lossy failover), but epoch 2's versions start at 2 << 40 regardless.
        let mut lossy = RecordTable::default();
        write(&mut lossy, 1, &[put("k", &[1], None)], 1);
        assert_eq!(
            write(&mut lossy, 2, &[put("k", b"new", None)], 1),
            RecordReply::Done(vec![RecordOutcome::Put { key: "k".into(), version: 2 << 40, changed: true }])
        );
        assert!(lossy.version_of("k") > t.version_of("k"));
        assert_eq!(version_epoch(lossy.version_of("k")), 2);
    }

    #[test]
    fn limits_are_checked_and_named() {
        let t = RecordTable::default();
        let reason = |ops: &[RecordOp]| match t.decide(1, ops, 0, LogPos::new(1, 1)).reply {
            RecordReply::Invalid { reason } => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(reason(&[put("", b"", None)]), "record key is empty");
        assert_eq!(
            reason(&[put(&"k".repeat(513), b"", None)]),
            "record key is 513 bytes, longer than the limit of 512 bytes"
        );
        assert!(reason(&[put("k", &vec![0; MAX_VALUE_BYTES + 1], None)]).contains("limit of 1048576 bytes"));
        assert_eq!(reason(&[]), "a record write is empty");
        assert_eq!(reason(&[put("a", b"", None), del("a", None)]), "record key \"a\" appears twice in one write");
        assert!(validate_key(&"é".repeat(256)).is_ok(), "512 bytes of UTF-8");
        assert!(validate_key("a/b/c").is_ok());
        assert!(validate_value_len(MAX_VALUE_BYTES).is_ok());
    }

    #[test]
    fn pages_walk_a_prefix_without_gaps() {
        let mut t = RecordTable::default();
        let ops: Vec<RecordOp> = (0..25).map(|i| put(&format!("p/{i:03}"), b"v", None)).collect();
        write(&mut t, 1, &ops, 1);
        write(&mut t, 1, &[put("q", b"v", None), put("o", b"v", None)], 2);
        let mut after = String::new();
        let mut seen = vec![];
        loop {
            let (page, next) = t.page("p/", &after, 10);
            seen.extend(page.iter().map(|r| r.key.clone()));
            match next {
                Some(n) => after = n,
                None => break,
            }
        }
        assert_eq!(seen, (0..25).map(|i| format!("p/{i:03}")).collect::<Vec<_>>());
        assert_eq!(t.page("zz", "", 10), (vec![], None));
    }

    #[test]
    fn from_rows_refuses_a_row_newer_than_the_counter() {
        let row = RecordRow {
            key: "k".into(),
            value: vec![],
            version: E1 + 3,
            prev_version: 0,
            proposed_at_ms: 0,
            term: 1,
            index: 1,
        };
        assert!(RecordTable::from_rows([row.clone()], RecordCounters { last_version: E1 + 2, writes: 1 }).is_err());
        let t = RecordTable::from_rows([row], RecordCounters { last_version: E1 + 3, writes: 1 }).unwrap();
        assert_eq!(t.bytes, 1);
    }

    /// A small deterministic generator (the crate has no dependencies beyond serde).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    /// Property: over random writes across epochs, (a) no key ever gets a version any key had
    /// before, (b) a write whose condition names a version the key does not hold (and that is
    /// not its own retry) never succeeds, (c) the counters match the table.
    #[test]
    fn versions_never_repeat_and_stale_conditions_never_match() {
        for seed in 0..200 {
            let mut rng = Lcg(seed);
            let mut t = RecordTable::default();
            let mut handed: std::collections::BTreeSet<u64> = Default::default();
            let mut epoch = 1;
            for index in 1..200u64 {
                if rng.next(30) == 0 {
                    epoch += 1;
                }
                let key = format!("k{}", rng.next(4));
                let value = vec![rng.next(3) as u8];
                let cond = match rng.next(3) {
                    0 => None,
                    1 => Some(t.version_of(&key)),
                    _ => Some(*handed.iter().nth(rng.next(handed.len() as u64 + 1) as usize).unwrap_or(&0)),
                };
                let op = if rng.next(4) == 0 {
                    RecordOp::Delete { key: key.clone(), if_version: cond }
                } else {
                    RecordOp::Put { key: key.clone(), value: value.clone(), if_version: cond }
                };
                let before = t.rows.get(&key).cloned();
                let d = t.decide(epoch, std::slice::from_ref(&op), 0, LogPos::new(1, index));
                if let (RecordReply::Done(_), Some(n)) = (&d.reply, cond) {
                    let cur = before.as_ref().map_or(0, |r| r.version);
                    let own_retry = matches!(&op, RecordOp::Put { value: v, .. }
                        if before.as_ref().is_some_and(|r| &r.value == v && r.prev_version == n));
                    assert!(n == cur || own_retry, "seed {seed}: condition {n} matched version {cur}");
                }
                for c in &d.changes {
                    if let Change::Set(r) = c {
                        assert!(handed.insert(r.version), "seed {seed}: version {} repeated", r.version);
                        assert_eq!(version_epoch(r.version), epoch);
                    }
                }
                t.apply(&d.changes);
                assert_eq!(t.bytes, t.rows.values().map(RecordRow::bytes).sum::<u64>());
            }
        }
    }
}
