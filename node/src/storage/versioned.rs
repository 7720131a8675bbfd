//! Versioned encodings of what the Raft layer stores: the values it keeps in redb's `kv` table
//! (a group's vote, purge marker, applied log id and membership), the tenant catalog's rows (the
//! `segments` table, `tenant/group_state.rs` `encode_row`) and its snapshot files.
//!
//! Every such value starts with a version byte ([`KV_VERSION`]) and then the postcard bytes of
//! that version's type, so that a later change of format is read side by side with this one
//! rather than misread. A version this build does not know is refused with
//! [`StoreError::UnknownVersion`], a value, never a panic.
//!
//! Stores written before the version byte existed hold the bare postcard bytes, which can start
//! with any byte, so the two forms cannot be told apart by looking at a value. The store says
//! which form it holds instead: `Store::init` writes the store's format ([`STORE_FORMAT`]) and
//! `Store::open` upgrades an older store, in one durable transaction, by putting the version
//! byte in front of every value named in [`RAFT_KV_KEYS`] (format absent) and of every catalog
//! row (format absent or 1) before anything reads them.
//!
//! Snapshot files are too large to rewrite on open. A snapshot file from before the version byte
//! starts with its metadata's `Option<LogId>`, whose postcard tag is 0 or 1; a versioned one
//! starts with [`SNAPSHOT_MAGIC`] (`T` is 0x54), so [`decode_snapshot_file`] reads both forms.
//!
//! Raft log records are told apart by their record kind instead (`storage/raft_log.rs`): a
//! record of the kind written before log entries were versioned holds a bare postcard entry
//! (with a segment's bytes inline); a versioned record starts with [`LOG_ENTRY_VERSION`]
//! ([`encode_log_entry`], [`decode_log_entry`]).

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::store::StoreError;

/// The version byte in front of each value in [`RAFT_KV_KEYS`].
pub const KV_VERSION: u8 = 1;

/// The store's format, kept as (node, `format`) in the `kv` table: 1 since values carry
/// [`KV_VERSION`]; 2 since the tenant catalog's rows (the `segments` table) do too; absent in
/// stores written before either.
pub const STORE_FORMAT: u8 = 2;

/// The keys of the `kv` table whose values the Raft layer encodes with [`encode_value`]
/// (`raft/log_store.rs`: vote, purged; `raft/state_machine.rs`: applied, membership).
pub const RAFT_KV_KEYS: &[&str] = &["vote", "purged", "applied", "membership"];

/// The first bytes of a versioned snapshot file, followed by [`SNAPSHOT_VERSION`].
pub const SNAPSHOT_MAGIC: &[u8; 4] = b"TSNP";
pub const SNAPSHOT_VERSION: u8 = 1;

/// A value of [`RAFT_KV_KEYS`]: [`KV_VERSION`], then its postcard bytes.
pub fn encode_value<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_extend(v, vec![KV_VERSION]).expect("in-memory values always encode")
}

/// Decodes a value written by [`encode_value`]; `what` names it in errors.
pub fn decode_value<T: DeserializeOwned>(what: &str, b: &[u8]) -> Result<T, StoreError> {
    match b.split_first() {
        Some((&KV_VERSION, body)) => postcard::from_bytes(body).map_err(|e| corrupt(what, e)),
        Some((&found, _)) => Err(StoreError::UnknownVersion { what: what.into(), found, known: KV_VERSION }),
        None => Err(StoreError::Corrupt { what: what.into(), detail: "empty value: no version byte".into() }),
    }
}

/// A snapshot file: [`SNAPSHOT_MAGIC`], [`SNAPSHOT_VERSION`], then its postcard bytes.
pub fn encode_snapshot_file<T: Serialize>(v: &T) -> Vec<u8> {
    let mut head = SNAPSHOT_MAGIC.to_vec();
    head.push(SNAPSHOT_VERSION);
    postcard::to_extend(v, head).expect("in-memory values always encode")
}

/// Decodes a snapshot file of [`SNAPSHOT_VERSION`], or one written before snapshot files had a
/// version (which never starts with [`SNAPSHOT_MAGIC`]: see the module docs).
pub fn decode_snapshot_file<T: DeserializeOwned>(what: &str, b: &[u8]) -> Result<T, StoreError> {
    let Some(rest) = b.strip_prefix(SNAPSHOT_MAGIC.as_slice()) else {
        return postcard::from_bytes(b).map_err(|e| corrupt(what, e));
    };
    match rest.split_first() {
        Some((&SNAPSHOT_VERSION, body)) => postcard::from_bytes(body).map_err(|e| corrupt(what, e)),
        Some((&found, _)) => Err(StoreError::UnknownVersion { what: what.into(), found, known: SNAPSHOT_VERSION }),
        None => Err(StoreError::Corrupt { what: what.into(), detail: "no version after the magic".into() }),
    }
}

/// The version byte in front of each versioned Raft log record: 1 since segment bytes are
/// sideloaded into chunk files and the record keeps only their references (`raft/log_store.rs`).
pub const LOG_ENTRY_VERSION: u8 = 1;

/// A versioned Raft log record: [`LOG_ENTRY_VERSION`], then its postcard bytes.
pub fn encode_log_entry<T: Serialize>(v: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_extend(v, vec![LOG_ENTRY_VERSION])
}

/// Decodes a record written by [`encode_log_entry`]; `what` names it in errors.
pub fn decode_log_entry<T: DeserializeOwned>(what: &str, b: &[u8]) -> Result<T, StoreError> {
    match b.split_first() {
        Some((&LOG_ENTRY_VERSION, body)) => postcard::from_bytes(body).map_err(|e| corrupt(what, e)),
        Some((&found, _)) => Err(StoreError::UnknownVersion { what: what.into(), found, known: LOG_ENTRY_VERSION }),
        None => Err(StoreError::Corrupt { what: what.into(), detail: "empty log record: no version byte".into() }),
    }
}

/// The legacy value of [`RAFT_KV_KEYS`] in the form [`decode_value`] reads.
pub fn upgrade_value(legacy: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(legacy.len() + 1);
    v.push(KV_VERSION);
    v.extend_from_slice(legacy);
    v
}

fn corrupt(what: &str, e: postcard::Error) -> StoreError {
    StoreError::Corrupt { what: what.into(), detail: e.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct Mark {
        term: u64,
        index: u64,
    }

    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct File {
        last: Option<u64>,
        data: Vec<u8>,
    }

    #[test]
    fn a_value_starts_with_its_version_and_round_trips() {
        let m = Mark { term: 3, index: 900 };
        let b = encode_value(&m);
        assert_eq!(b[0], KV_VERSION);
        assert_eq!(&b[1..], postcard::to_stdvec(&m).unwrap().as_slice());
        assert_eq!(decode_value::<Mark>("mark", &b).unwrap(), m);
        assert_eq!(upgrade_value(&b[1..]), b, "an upgraded legacy value is the versioned value");
    }

    #[test]
    fn an_unknown_version_or_an_empty_value_is_an_error_not_a_panic() {
        let mut b = encode_value(&Mark { term: 3, index: 900 });
        b[0] = 2;
        let err = decode_value::<Mark>("vote of t/a/1", &b).unwrap_err();
        assert!(matches!(&err, StoreError::UnknownVersion { found: 2, known: 1, .. }), "{err:?}");
        assert!(err.to_string().contains("vote of t/a/1"), "{err}");
        assert!(matches!(decode_value::<Mark>("vote", &[]), Err(StoreError::Corrupt { .. })));
        assert!(matches!(decode_value::<Mark>("vote", &[KV_VERSION, 0x80]), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn snapshot_files_of_both_forms_are_read_and_an_unknown_version_is_refused() {
        for f in [File { last: None, data: vec![1, 2, 3] }, File { last: Some(77), data: vec![9; 300] }] {
            let new = encode_snapshot_file(&f);
            assert!(new.starts_with(b"TSNP\x01"));
            assert_eq!(decode_snapshot_file::<File>("snapshot", &new).unwrap(), f);
            // What a build before the version wrote: starts with the Option's tag.
            let old = postcard::to_stdvec(&f).unwrap();
            assert!(old[0] <= 1);
            assert_eq!(decode_snapshot_file::<File>("snapshot", &old).unwrap(), f);
        }
        let mut new = encode_snapshot_file(&File { last: None, data: vec![] });
        new[4] = 9;
        assert!(matches!(
            decode_snapshot_file::<File>("snapshot", &new),
            Err(StoreError::UnknownVersion { found: 9, known: 1, .. })
        ));
        assert!(decode_snapshot_file::<File>("snapshot", b"TSNP").is_err());
    }

    #[test]
    fn log_records_carry_their_version_and_an_unknown_one_is_refused() {
        let m = Mark { term: 2, index: 11 };
        let mut b = encode_log_entry(&m).unwrap();
        assert_eq!(b[0], LOG_ENTRY_VERSION);
        assert_eq!(decode_log_entry::<Mark>("entry", &b).unwrap(), m);
        b[0] = 7;
        assert!(matches!(decode_log_entry::<Mark>("entry", &b), Err(StoreError::UnknownVersion { found: 7, .. })));
        assert!(matches!(decode_log_entry::<Mark>("entry", &[]), Err(StoreError::Corrupt { .. })));
    }
}
