//! The node's Raft log: every group's entries in one sequence of append-only files
//! ([`LogFiles`]), with an in-memory index from (group, index) to where the entry lies.
//!
//! Two kinds of records:
//! - an **entry**: (group, index, the encoded entry). It replaces any entry at that index. This
//!   build writes entries as [`KIND_ENTRY_VERSIONED`] records, whose bytes start with a version
//!   (`storage/versioned.rs`); [`KIND_ENTRY`] records, written by builds before that (a bare
//!   postcard entry, segment bytes inline), are still read, and [`EntryBytes::legacy`] says which
//!   form an entry is in;
//! - a **truncation**: (group, from): drops the group's entries from `from` on.
//!
//! Replaying the records in file order rebuilds the index. Purges are not records: a group's
//! purge marker lives in redb (written durably before the index lets go of the entries), and the
//! group drops what lies at or below it when it opens ([`RaftLog::purge_upto`]).
//!
//! Space: a file's live bytes are those of entries the index still points at. The store's writer
//! calls [`RaftLog::maintain`] after each batch: when the oldest file is mostly dead and there are
//! more than [`KEEP_FILES`] files, its live entries are appended again at the head (synced) and
//! the index moved to them; files with nothing live are then deleted, oldest first. An entry that
//! is never purged (a sealed epoch's group) is thus carried forward instead of pinning old files.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use super::log_files::{FilesStats, LogFiles, RecLoc};
use super::store::StoreError;
use crate::seams::disk::DiskRef;

/// Files kept before a sparse oldest file is compacted away.
pub const KEEP_FILES: usize = 4;

/// An entry as builds before versioned log records wrote it (read, never written).
pub(crate) const KIND_ENTRY: u8 = 1;
pub(crate) const KIND_TRUNCATE: u8 = 2;
/// An entry whose bytes start with their version (`versioned::LOG_ENTRY_VERSION`).
pub(crate) const KIND_ENTRY_VERSIONED: u8 = 3;

pub(crate) fn is_entry(kind: u8) -> bool {
    kind == KIND_ENTRY || kind == KIND_ENTRY_VERSIONED
}

/// One change to a group's log, as the store's writer applies it.
#[derive(Debug)]
pub enum LogOp {
    /// Entries (index, encoded entry), in index order.
    Entries { group: Arc<str>, entries: Vec<(u64, Vec<u8>)> },
    /// Drop the group's entries from `from` on.
    TruncateFrom { group: Arc<str>, from: u64 },
}

/// An entry's bytes as read back: the record payload and where the entry starts in it.
pub struct EntryBytes {
    pub(crate) payload: Vec<u8>,
    pub(crate) start: usize,
}

impl EntryBytes {
    pub fn bytes(&self) -> &[u8] {
        &self.payload[self.start..]
    }

    /// Whether the entry was written by a build before log records were versioned.
    pub fn legacy(&self) -> bool {
        self.payload.first() == Some(&KIND_ENTRY)
    }
}

pub(crate) fn encode(kind: u8, group: &str, index: u64, bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
    let glen = u16::try_from(group.len()).map_err(|_| StoreError::Io(format!("group name too long: {group}")))?;
    let mut out = Vec::with_capacity(1 + 2 + group.len() + 8 + bytes.len());
    out.push(kind);
    out.extend_from_slice(&glen.to_le_bytes());
    out.extend_from_slice(group.as_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(out)
}

/// (kind, group, index, offset of the rest) of a record payload.
pub(crate) fn decode(p: &[u8]) -> Result<(u8, &str, u64, usize), StoreError> {
    let bad = |d: &str| StoreError::Corrupt { what: "raft log record".into(), detail: d.into() };
    let (&kind, rest) = p.split_first().ok_or_else(|| bad("empty"))?;
    if rest.len() < 2 {
        return Err(bad("short group length"));
    }
    let glen = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
    let group = rest.get(2..2 + glen).ok_or_else(|| bad("short group name"))?;
    let group = std::str::from_utf8(group).map_err(|_| bad("group name is not UTF-8"))?;
    let at = 1 + 2 + glen;
    let index = p.get(at..at + 8).ok_or_else(|| bad("short index"))?;
    let index = u64::from_le_bytes(index.try_into().expect("8 bytes"));
    if !is_entry(kind) && kind != KIND_TRUNCATE {
        return Err(bad(&format!("unknown record kind {kind}")));
    }
    Ok((kind, group, index, at + 8))
}

type Index = BTreeMap<Arc<str>, BTreeMap<u64, RecLoc>>;

pub struct RaftLog {
    files: LogFiles,
    /// A BTreeMap, not a HashMap: maintenance walks it, and the simulator needs that walk in
    /// the same order in every run.
    index: Mutex<Index>,
}

impl std::fmt::Debug for RaftLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftLog").field("files", &self.files).finish()
    }
}

fn lock(m: &Mutex<Index>) -> MutexGuard<'_, Index> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Applies one record to the index; returns the locations it stopped pointing at.
fn apply(index: &mut Index, kind: u8, group: &str, at: u64, loc: RecLoc) -> Vec<RecLoc> {
    if is_entry(kind) {
        let g = match index.get_mut(group) {
            Some(g) => g,
            None => index.entry(Arc::from(group)).or_default(),
        };
        g.insert(at, loc).into_iter().collect()
    } else {
        index.get_mut(group).map(|g| g.split_off(&at).into_values().collect()).unwrap_or_default()
    }
}

impl RaftLog {
    /// Opens (or creates) the log in `dir` and rebuilds its index.
    pub fn open(disk: DiskRef, dir: &Path, roll_bytes: u64) -> Result<RaftLog, StoreError> {
        let mut index = Index::new();
        let files = LogFiles::open(disk, dir, roll_bytes, |loc, payload| {
            let (kind, group, at, _) = decode(payload)?;
            apply(&mut index, kind, group, at, loc);
            Ok(())
        })?;
        for g in index.values() {
            for loc in g.values() {
                files.retain(*loc);
            }
        }
        Ok(RaftLog { files, index: Mutex::new(index) })
    }

    /// Writes `ops` as records (one write; with `sync`, one `sync_data`), then points the index
    /// at them. Returns only after the sync.
    pub fn write(&self, ops: Vec<LogOp>, sync: bool) -> Result<(), StoreError> {
        let mut payloads = vec![];
        let mut live = vec![];
        let mut what: Vec<(u8, Arc<str>, u64)> = vec![];
        for op in ops {
            match op {
                LogOp::Entries { group, entries } => {
                    for (at, bytes) in entries {
                        payloads.push(encode(KIND_ENTRY_VERSIONED, &group, at, &bytes)?);
                        live.push(true);
                        what.push((KIND_ENTRY_VERSIONED, group.clone(), at));
                    }
                }
                LogOp::TruncateFrom { group, from } => {
                    payloads.push(encode(KIND_TRUNCATE, &group, from, &[])?);
                    live.push(false);
                    what.push((KIND_TRUNCATE, group, from));
                }
            }
        }
        let locs = self.files.append(&payloads, &live, sync)?;
        let mut released = vec![];
        {
            let mut index = lock(&self.index);
            for ((kind, group, at), loc) in what.into_iter().zip(locs) {
                released.extend(apply(&mut index, kind, &group, at, loc));
            }
        }
        for loc in released {
            self.files.release(loc);
        }
        Ok(())
    }

    /// The group's entries with index in `lo..=hi` that the log holds, in order.
    pub fn read(&self, group: &str, lo: u64, hi: u64) -> Result<Vec<(u64, EntryBytes)>, StoreError> {
        if lo > hi {
            return Ok(vec![]);
        }
        let locs: Vec<(u64, RecLoc)> = match lock(&self.index).get(group) {
            Some(g) => g.range(lo..=hi).map(|(i, l)| (*i, *l)).collect(),
            None => return Ok(vec![]),
        };
        let mut out = Vec::with_capacity(locs.len());
        for (at, loc) in locs {
            if let Some(e) = self.read_one(group, at, loc)? {
                out.push((at, e));
            }
        }
        Ok(out)
    }

    /// Reads one entry; when its file went away meanwhile (maintenance moved it), looks it up
    /// again. `None` when the entry is no longer in the log.
    fn read_one(&self, group: &str, at: u64, mut loc: RecLoc) -> Result<Option<EntryBytes>, StoreError> {
        loop {
            if let Some(payload) = self.files.read(loc)? {
                let (kind, g, i, start) = decode(&payload)?;
                if !is_entry(kind) || g != group || i != at {
                    return Err(StoreError::Corrupt {
                        what: "raft log index".into(),
                        detail: format!("{group}[{at}] points at a record of {g}[{i}] (kind {kind})"),
                    });
                }
                return Ok(Some(EntryBytes { payload, start }));
            }
            match lock(&self.index).get(group).and_then(|g| g.get(&at)) {
                Some(now) if *now != loc => loc = *now,
                _ => return Ok(None),
            }
        }
    }

    /// The group's first and last index in the log.
    pub fn bounds(&self, group: &str) -> Option<(u64, u64)> {
        let index = lock(&self.index);
        let g = index.get(group)?;
        Some((*g.first_key_value()?.0, *g.last_key_value()?.0))
    }

    /// Drops the group's entries at or below `upto` from the index. The caller has made the
    /// purge durable (its marker) first.
    pub fn purge_upto(&self, group: &str, upto: u64) {
        let dropped: Vec<RecLoc> = {
            let mut index = lock(&self.index);
            let Some(g) = index.get_mut(group) else { return };
            let keep = g.split_off(&upto.saturating_add(1));
            let dropped = std::mem::replace(g, keep);
            dropped.into_values().collect()
        };
        for loc in dropped {
            self.files.release(loc);
        }
    }

    /// Space upkeep, run by the store's writer between batches (see the module doc).
    pub fn maintain(&self) -> Result<(), StoreError> {
        if let Some(seq) = self.files.sparse_oldest(KEEP_FILES) {
            self.compact(seq)?;
        }
        self.files.collect()?;
        Ok(())
    }

    /// Appends the live entries of file `seq` again at the head and moves the index to them.
    fn compact(&self, seq: u64) -> Result<(), StoreError> {
        let mut moving: Vec<(RecLoc, Arc<str>, u64)> = vec![];
        for (group, g) in lock(&self.index).iter() {
            for (at, loc) in g {
                if loc.file == seq {
                    moving.push((*loc, group.clone(), *at));
                }
            }
        }
        moving.sort_unstable_by_key(|(loc, _, _)| loc.offset);
        let mut payloads = Vec::with_capacity(moving.len());
        for (loc, _, _) in &moving {
            payloads.push(self.files.read(*loc)?.ok_or_else(|| StoreError::Corrupt {
                what: "raft log".into(),
                detail: format!("a live record {loc:?} is in a deleted file"),
            })?);
        }
        let live = vec![true; payloads.len()];
        let new = self.files.append(&payloads, &live, true)?;
        let mut released = vec![];
        {
            let mut index = lock(&self.index);
            for ((old, group, at), new) in moving.into_iter().zip(new) {
                match index.get_mut(&group).and_then(|g| g.get_mut(&at)) {
                    Some(slot) if *slot == old => {
                        *slot = new;
                        released.push(old);
                    }
                    // Purged or replaced meanwhile: the copy is dead.
                    _ => released.push(new),
                }
            }
        }
        for loc in released {
            self.files.release(loc);
        }
        tracing::debug!(file = seq, "raft log file compacted");
        Ok(())
    }

    pub fn stats(&self) -> FilesStats {
        self.files.stats()
    }

    /// Why the log stopped taking writes (a failed write or sync), if it did.
    pub fn failed(&self) -> Option<String> {
        self.files.failed()
    }

    /// Groups with entries in the log.
    pub fn groups(&self) -> Vec<Arc<str>> {
        lock(&self.index).keys().cloned().collect()
    }

    /// Writes entries as a build before versioned log records did ([`KIND_ENTRY`] records, synced):
    /// for tests that open a log of the previous format.
    #[cfg(test)]
    pub fn write_legacy_entries(&self, group: &str, entries: &[(u64, Vec<u8>)]) -> Result<(), StoreError> {
        let payloads =
            entries.iter().map(|(at, b)| encode(KIND_ENTRY, group, *at, b)).collect::<Result<Vec<_>, _>>()?;
        let live = vec![true; payloads.len()];
        let locs = self.files.append(&payloads, &live, true)?;
        let mut index = lock(&self.index);
        for ((at, _), loc) in entries.iter().zip(locs) {
            apply(&mut index, KIND_ENTRY, group, *at, loc);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seams::disk::OsDisk;

    fn entries(group: &str, from: u64, n: u64, size: usize) -> LogOp {
        LogOp::Entries { group: group.into(), entries: (from..from + n).map(|i| (i, vec![i as u8; size])).collect() }
    }

    fn read_all(log: &RaftLog, group: &str) -> Vec<(u64, Vec<u8>)> {
        log.read(group, 0, u64::MAX).unwrap().into_iter().map(|(i, e)| (i, e.bytes().to_vec())).collect()
    }

    #[test]
    fn replay_rebuilds_entries_truncations_and_replacements() {
        let dir = tempfile::tempdir().unwrap();
        let disk: DiskRef = Arc::new(OsDisk::new());
        let log = RaftLog::open(disk.clone(), dir.path(), 1 << 20).unwrap();
        log.write(vec![entries("a", 1, 5, 3), entries("b", 1, 2, 4)], true).unwrap();
        log.write(vec![LogOp::TruncateFrom { group: "a".into(), from: 4 }], true).unwrap();
        log.write(vec![LogOp::Entries { group: "a".into(), entries: vec![(4, b"new".to_vec())] }], true).unwrap();
        let want_a = vec![(1, vec![1; 3]), (2, vec![2; 3]), (3, vec![3; 3]), (4, b"new".to_vec())];
        assert_eq!(read_all(&log, "a"), want_a);
        assert_eq!(log.bounds("a"), Some((1, 4)));
        drop(log);
        let log = RaftLog::open(disk, dir.path(), 1 << 20).unwrap();
        assert_eq!(read_all(&log, "a"), want_a);
        assert_eq!(read_all(&log, "b"), vec![(1, vec![1; 4]), (2, vec![2; 4])]);
        assert!(log.read("c", 0, 9).unwrap().is_empty());
    }

    #[test]
    fn purged_and_truncated_space_is_given_back_and_a_never_purged_group_is_carried_forward() {
        let dir = tempfile::tempdir().unwrap();
        let disk: DiskRef = Arc::new(OsDisk::new());
        let log = RaftLog::open(disk.clone(), dir.path(), 4096).unwrap();
        // A sealed group: three entries, never purged.
        log.write(vec![entries("sealed", 1, 3, 100)], true).unwrap();
        // A busy group that purges as it goes.
        for round in 0..200u64 {
            log.write(vec![entries("busy", round * 10 + 1, 10, 200)], true).unwrap();
            log.purge_upto("busy", round * 10 + 5);
            log.maintain().unwrap();
            let s = log.stats();
            assert!(s.files <= KEEP_FILES + 2, "round {round}: files pile up: {s:?}");
        }
        let s = log.stats();
        assert!(s.deleted_files > 50, "old files were deleted: {s:?}");
        assert!(s.bytes < 8 * 4096, "disk use stays bounded: {s:?}");
        let sealed = read_all(&log, "sealed");
        assert_eq!(sealed, vec![(1, vec![1; 100]), (2, vec![2; 100]), (3, vec![3; 100])]);
        assert_eq!(log.bounds("busy"), Some((1996, 2000)));
        drop(log);
        let log = RaftLog::open(disk, dir.path(), 4096).unwrap();
        assert_eq!(read_all(&log, "sealed"), sealed, "moved entries survive a reopen");
        // Reopening brings back what the purge marker (kept elsewhere) covers; the group drops it.
        log.purge_upto("busy", 1995);
        assert_eq!(log.bounds("busy"), Some((1996, 2000)));
    }

    #[test]
    fn a_dense_oldest_file_that_is_never_purged_does_not_stop_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let disk: DiskRef = Arc::new(OsDisk::new());
        let log = RaftLog::open(disk.clone(), dir.path(), 4096).unwrap();
        // A quiet tenant's large segment fills the first file and is never purged.
        log.write(vec![entries("quiet", 1, 1, 4000)], true).unwrap();
        for round in 0..300u64 {
            log.write(vec![entries("busy", round * 4 + 1, 4, 300)], true).unwrap();
            log.purge_upto("busy", round * 4 + 2);
            log.maintain().unwrap();
        }
        let s = log.stats();
        assert!(s.files <= KEEP_FILES + 3, "files pile up behind the dense one: {s:?}");
        assert_eq!(read_all(&log, "quiet"), vec![(1, vec![1; 4000])]);
        drop(log);
        let log = RaftLog::open(disk, dir.path(), 4096).unwrap();
        assert_eq!(read_all(&log, "quiet"), vec![(1, vec![1; 4000])], "the moved entry survives a reopen");
    }

    #[test]
    fn a_record_that_is_not_what_the_index_says_is_reported() {
        assert!(decode(&[9, 1, 0, b'a', 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode(&[1, 5, 0, b'a']).is_err());
        let p = encode(KIND_ENTRY, "grp", 7, b"xyz").unwrap();
        let (kind, g, i, start) = decode(&p).unwrap();
        assert_eq!((kind, g, i, &p[start..]), (KIND_ENTRY, "grp", 7, &b"xyz"[..]));
    }

    #[test]
    fn legacy_entries_replay_beside_versioned_ones_and_say_which_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let disk: DiskRef = Arc::new(OsDisk::new());
        let log = RaftLog::open(disk.clone(), dir.path(), 1 << 20).unwrap();
        log.write_legacy_entries("a", &[(1, b"old".to_vec()), (2, b"old2".to_vec())]).unwrap();
        log.write(vec![LogOp::Entries { group: "a".into(), entries: vec![(2, b"new".to_vec())] }], true).unwrap();
        drop(log);
        let log = RaftLog::open(disk, dir.path(), 1 << 20).unwrap();
        let got: Vec<(u64, Vec<u8>, bool)> =
            log.read("a", 0, 9).unwrap().into_iter().map(|(i, e)| (i, e.bytes().to_vec(), e.legacy())).collect();
        assert_eq!(got, vec![(1, b"old".to_vec(), true), (2, b"new".to_vec(), false)]);
    }
}
