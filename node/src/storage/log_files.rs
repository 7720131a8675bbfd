//! Append-only record files: the byte layer under the node's Raft log ([`super::raft_log`]).
//!
//! A node's Raft log records go, for every group it hosts, into one sequence of files
//! `raftlog/<seq>.log` (seq in 16 hex digits), each opened through the disk seam as a
//! random-access backend. Only the newest file (the head) is appended to; it rolls to a new
//! file once it holds `roll_bytes`. Why not redb: see ARCHITECTURE.md "Storage".
//!
//! Layout:
//! - a file starts with a 16-byte header: `TETRADLG` and its seq (big-endian);
//! - then records: `magic u32 | len u32 | crc32 u32` (little-endian) and `len` payload bytes,
//!   where the crc covers the length field and the payload.
//!
//! Durability: [`LogFiles::append`] writes a batch of records with one write and, when asked,
//! one `sync_data`, and returns only after that sync. Crash recovery ([`LogFiles::open`]):
//! every file but the head was synced whole before the head rolled past it, so a bad record
//! there is damage and the open fails. In the head, the first record that does not check out
//! (short, wrong magic, wrong crc: what a torn or lost unsynced write leaves) ends the log; the
//! file is cut there and synced before anything is appended after it. Everything cut was never
//! reported durable.
//!
//! Space: the owner tells which records are still live ([`LogFiles::release`]); files are
//! deleted oldest first once nothing live is left in them ([`LogFiles::collect`]). Deleting only
//! a prefix keeps replay sound: a record that cancels older ones (a truncation) is never deleted
//! before the records it cancels.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use redb::StorageBackend;

use super::store::{blocking, StoreError};
use crate::seams::disk::DiskRef;

const FILE_MAGIC: &[u8; 8] = b"TETRADLG";
const FILE_HEADER: u64 = 16;
const RECORD_MAGIC: u32 = 0x7e7a_d10c;
/// Bytes of a record before its payload.
pub const RECORD_HEADER: u64 = 12;
/// The largest payload a record may carry (a log entry holds at most one WAL segment).
const MAX_PAYLOAD: u32 = 256 << 20;
const SUFFIX: &str = ".log";

/// Where one record's payload lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecLoc {
    pub file: u64,
    /// Offset of the record (its header) in the file.
    pub offset: u64,
    /// Payload length.
    pub len: u32,
}

impl RecLoc {
    /// Bytes the record takes on disk.
    pub fn size(&self) -> u64 {
        RECORD_HEADER + u64::from(self.len)
    }
}

/// Sizes, for status and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilesStats {
    pub files: usize,
    pub bytes: u64,
    pub live_bytes: u64,
    pub deleted_files: u64,
}

struct OneFile {
    backend: Arc<dyn StorageBackend>,
    /// Bytes written (header and records).
    len: u64,
    /// Bytes of records the owner still needs.
    live: u64,
}

struct Files {
    by_seq: BTreeMap<u64, OneFile>,
    deleted: u64,
}

/// Appender state: only one append runs at a time, and readers never wait for its sync.
struct Head {
    seq: u64,
    /// Set when a write or sync failed: what is on disk past the last good sync is unknown, so
    /// nothing more is appended until the node restarts and recovers the file.
    poisoned: Option<String>,
}

pub struct LogFiles {
    disk: DiskRef,
    dir: PathBuf,
    roll_bytes: u64,
    files: Mutex<Files>,
    head: Mutex<Head>,
}

impl std::fmt::Debug for LogFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFiles").field("dir", &self.dir).field("stats", &self.stats()).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn file_name(seq: u64) -> String {
    format!("{seq:016x}{SUFFIX}")
}

fn parse_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(SUFFIX)?;
    (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok()).flatten()
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what} {}: {e}", path.display()))
}

fn crc(len: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn frame(out: &mut Vec<u8>, payload: &[u8]) -> Result<u32, StoreError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| *l <= MAX_PAYLOAD)
        .ok_or_else(|| StoreError::Io(format!("a log record of {} bytes is too large", payload.len())))?;
    out.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc(len, payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(len)
}

/// Why a record could not be read where one was expected.
enum Bad {
    /// Nothing (or not enough) written there: the end of the log, or a torn tail.
    End,
    /// Bytes that are not a valid record.
    Garbage(String),
}

/// Reads and checks the record at `offset` of a file of `file_len` bytes.
fn read_record(b: &dyn StorageBackend, offset: u64, file_len: u64) -> Result<Result<Vec<u8>, Bad>, std::io::Error> {
    if offset + RECORD_HEADER > file_len {
        return Ok(Err(Bad::End));
    }
    let mut h = [0u8; RECORD_HEADER as usize];
    b.read(offset, &mut h)?;
    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let (magic, len, sum) = (word(0), word(4), word(8));
    if magic != RECORD_MAGIC {
        return Ok(Err(if h.iter().all(|x| *x == 0) { Bad::End } else { Bad::Garbage("bad magic".into()) }));
    }
    if len == 0 || len > MAX_PAYLOAD {
        return Ok(Err(Bad::Garbage(format!("impossible length {len}"))));
    }
    if offset + RECORD_HEADER + u64::from(len) > file_len {
        return Ok(Err(Bad::End));
    }
    let mut payload = vec![0u8; len as usize];
    b.read(offset + RECORD_HEADER, &mut payload)?;
    if crc(len, &payload) != sum {
        return Ok(Err(Bad::Garbage("checksum mismatch".into())));
    }
    Ok(Ok(payload))
}

impl LogFiles {
    /// Opens the record files in `dir` (creating the directory and a first file if there are
    /// none), recovers the head's tail as the module doc says, and hands every record, oldest
    /// first, to `visit`. Records start out not live; the owner marks them with [`Self::retain`].
    pub fn open(
        disk: DiskRef,
        dir: &Path,
        roll_bytes: u64,
        mut visit: impl FnMut(RecLoc, &[u8]) -> Result<(), StoreError>,
    ) -> Result<LogFiles, StoreError> {
        blocking(|| {
            disk.create_dir_all(dir).map_err(|e| io("create", dir, e))?;
            let mut seqs: Vec<u64> =
                disk.list_dir(dir).map_err(|e| io("list", dir, e))?.iter().filter_map(|n| parse_name(n)).collect();
            seqs.sort_unstable();
            let mut by_seq = BTreeMap::new();
            let last = seqs.last().copied();
            for seq in seqs {
                let path = dir.join(file_name(seq));
                let backend: Arc<dyn StorageBackend> =
                    Arc::from(disk.open_backend(&path).map_err(|e| io("open", &path, e))?);
                let is_head = Some(seq) == last;
                let len = Self::recover(&*backend, &path, seq, is_head, &mut visit)?;
                by_seq.insert(seq, OneFile { backend, len, live: 0 });
            }
            let files = LogFiles {
                disk,
                dir: dir.to_path_buf(),
                roll_bytes: roll_bytes.max(FILE_HEADER + RECORD_HEADER + 1),
                files: Mutex::new(Files { by_seq, deleted: 0 }),
                head: Mutex::new(Head { seq: last.unwrap_or(0), poisoned: None }),
            };
            if last.is_none() {
                files.start_file(0)?;
            }
            Ok(files)
        })
    }

    /// Scans one file; returns the length up to its last good record (the head is cut there).
    fn recover(
        b: &dyn StorageBackend,
        path: &Path,
        seq: u64,
        is_head: bool,
        visit: &mut impl FnMut(RecLoc, &[u8]) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        let corrupt =
            |detail: String| StoreError::Corrupt { what: format!("raft log file {}", path.display()), detail };
        let file_len = b.len().map_err(|e| io("size", path, e))?;
        let mut header = [0u8; FILE_HEADER as usize];
        let header_ok = file_len >= FILE_HEADER && {
            b.read(0, &mut header).map_err(|e| io("read", path, e))?;
            &header[..8] == FILE_MAGIC && header[8..] == seq.to_be_bytes()
        };
        if !header_ok {
            if !is_head {
                return Err(corrupt("bad file header".into()));
            }
            // A head whose header never became durable holds nothing that was reported durable.
            Self::write_header(b, path, seq)?;
            return Ok(FILE_HEADER);
        }
        let mut at = FILE_HEADER;
        loop {
            match read_record(b, at, file_len).map_err(|e| io("read", path, e))? {
                Ok(payload) => {
                    let loc = RecLoc { file: seq, offset: at, len: payload.len() as u32 };
                    visit(loc, &payload)?;
                    at += loc.size();
                }
                Err(bad) => {
                    if at == file_len {
                        return Ok(at);
                    }
                    if !is_head {
                        let why = match bad {
                            Bad::End => "truncated record".to_string(),
                            Bad::Garbage(g) => g,
                        };
                        return Err(corrupt(format!("{why} at byte {at} of a file that was synced whole")));
                    }
                    if let Bad::Garbage(why) = bad {
                        tracing::warn!(file = %path.display(), at, why, "raft log ends in a torn write; cutting it");
                    }
                    b.set_len(at).map_err(|e| io("cut", path, e))?;
                    b.sync_data().map_err(|e| io("sync", path, e))?;
                    return Ok(at);
                }
            }
        }
    }

    fn write_header(b: &dyn StorageBackend, path: &Path, seq: u64) -> Result<(), StoreError> {
        let mut header = Vec::with_capacity(FILE_HEADER as usize);
        header.extend_from_slice(FILE_MAGIC);
        header.extend_from_slice(&seq.to_be_bytes());
        b.set_len(0).map_err(|e| io("cut", path, e))?;
        b.write(0, &header).map_err(|e| io("write", path, e))?;
        b.sync_data().map_err(|e| io("sync", path, e))
    }

    /// Creates file `seq` durably (its header synced, its directory entry made durable by the
    /// disk seam's open). The caller makes it the head.
    fn start_file(&self, seq: u64) -> Result<(), StoreError> {
        let path = self.dir.join(file_name(seq));
        let backend: Arc<dyn StorageBackend> =
            Arc::from(self.disk.open_backend(&path).map_err(|e| io("create", &path, e))?);
        Self::write_header(&*backend, &path, seq)?;
        lock(&self.files).by_seq.insert(seq, OneFile { backend, len: FILE_HEADER, live: 0 });
        Ok(())
    }

    /// Appends `payloads` as records in one write, then (with `sync`) one `sync_data`; returns
    /// their locations. `live[i]` says whether record i counts as live at once. After a failed
    /// write or sync every later append fails too (see [`Head::poisoned`]).
    pub fn append(&self, payloads: &[Vec<u8>], live: &[bool], sync: bool) -> Result<Vec<RecLoc>, StoreError> {
        if payloads.is_empty() {
            return Ok(vec![]);
        }
        let mut head = lock(&self.head);
        if let Some(why) = &head.poisoned {
            return Err(StoreError::Io(format!("the raft log stopped taking writes after an earlier failure: {why}")));
        }
        let result = blocking(|| self.append_locked(&mut head, payloads, live, sync));
        if let Err(e) = &result {
            head.poisoned = Some(e.to_string());
        }
        result
    }

    fn append_locked(
        &self,
        head: &mut Head,
        payloads: &[Vec<u8>],
        live: &[bool],
        sync: bool,
    ) -> Result<Vec<RecLoc>, StoreError> {
        let head_len = lock(&self.files).by_seq.get(&head.seq).map_or(0, |f| f.len);
        if head_len >= self.roll_bytes {
            // Sync the old head before moving on, so that every file but the head is complete
            // on disk (appends normally synced it already; this covers any that asked not to).
            let old = lock(&self.files).by_seq.get(&head.seq).map(|f| f.backend.clone());
            if let Some(b) = old {
                b.sync_data().map_err(|e| io("sync", &self.dir.join(file_name(head.seq)), e))?;
            }
            let next = head.seq + 1;
            self.start_file(next)?;
            head.seq = next;
        }
        let (backend, start) = {
            let files = lock(&self.files);
            let f = files.by_seq.get(&head.seq).expect("the head file is open");
            (f.backend.clone(), f.len)
        };
        let total: usize = payloads.iter().map(|p| p.len() + RECORD_HEADER as usize).sum();
        let mut buf = Vec::with_capacity(total);
        let mut locs = Vec::with_capacity(payloads.len());
        for p in payloads {
            let offset = start + buf.len() as u64;
            let len = frame(&mut buf, p)?;
            locs.push(RecLoc { file: head.seq, offset, len });
        }
        let path = self.dir.join(file_name(head.seq));
        backend.write(start, &buf).map_err(|e| io("write", &path, e))?;
        if sync {
            backend.sync_data().map_err(|e| io("sync", &path, e))?;
        }
        let mut files = lock(&self.files);
        let f = files.by_seq.get_mut(&head.seq).expect("the head file is open");
        f.len = start + buf.len() as u64;
        f.live += locs.iter().zip(live).filter(|(_, l)| **l).map(|(loc, _)| loc.size()).sum::<u64>();
        Ok(locs)
    }

    /// Reads and checks one record's payload; `None` when its file has been deleted (the
    /// record was moved or dropped since the caller looked up its location).
    pub fn read(&self, loc: RecLoc) -> Result<Option<Vec<u8>>, StoreError> {
        let (backend, len) = {
            let files = lock(&self.files);
            let Some(f) = files.by_seq.get(&loc.file) else { return Ok(None) };
            (f.backend.clone(), f.len)
        };
        let path = || self.dir.join(file_name(loc.file));
        let corrupt =
            |detail: String| StoreError::Corrupt { what: format!("raft log file {}", path().display()), detail };
        match blocking(|| read_record(&*backend, loc.offset, len)).map_err(|e| io("read", &path(), e))? {
            Ok(p) if p.len() == loc.len as usize => Ok(Some(p)),
            Ok(p) => Err(corrupt(format!("record at {} has {} bytes, {} expected", loc.offset, p.len(), loc.len))),
            Err(Bad::End) => Err(corrupt(format!("record at {} runs past the end", loc.offset))),
            Err(Bad::Garbage(why)) => Err(corrupt(format!("record at {}: {why}", loc.offset))),
        }
    }

    /// Counts a record (found by replay) as live.
    pub fn retain(&self, loc: RecLoc) {
        if let Some(f) = lock(&self.files).by_seq.get_mut(&loc.file) {
            f.live += loc.size();
        }
    }

    /// The owner no longer needs the record at `loc`.
    pub fn release(&self, loc: RecLoc) {
        if let Some(f) = lock(&self.files).by_seq.get_mut(&loc.file) {
            f.live = f.live.saturating_sub(loc.size());
        }
    }

    /// The oldest file, when there are more than `keep` files and less than half of the
    /// oldest is live: worth moving its live records to the head so it can be deleted.
    pub fn sparse_oldest(&self, keep: usize) -> Option<u64> {
        let head = lock(&self.head).seq;
        let files = lock(&self.files);
        if files.by_seq.len() <= keep {
            return None;
        }
        let (&seq, f) = files.by_seq.first_key_value()?;
        (seq != head && f.live > 0 && f.live * 2 < f.len).then_some(seq)
    }

    /// Deletes files, oldest first, while the oldest holds nothing live and is not the head.
    /// Callers make sure that what replaced their records is durable first.
    pub fn collect(&self) -> Result<usize, StoreError> {
        let head = lock(&self.head).seq;
        let mut deleted = 0;
        loop {
            let seq = {
                let mut files = lock(&self.files);
                match files.by_seq.first_key_value() {
                    Some((&seq, f)) if seq != head && f.live == 0 => {
                        files.by_seq.remove(&seq);
                        files.deleted += 1;
                        seq
                    }
                    _ => break,
                }
            };
            let path = self.dir.join(file_name(seq));
            blocking(|| self.disk.remove_file(&path)).map_err(|e| io("remove", &path, e))?;
            tracing::debug!(file = %path.display(), "raft log file deleted");
            deleted += 1;
        }
        Ok(deleted)
    }

    pub fn stats(&self) -> FilesStats {
        let files = lock(&self.files);
        FilesStats {
            files: files.by_seq.len(),
            bytes: files.by_seq.values().map(|f| f.len).sum(),
            live_bytes: files.by_seq.values().map(|f| f.live).sum(),
            deleted_files: files.deleted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seams::disk::OsDisk;

    fn open(disk: &DiskRef, dir: &Path, roll: u64) -> (LogFiles, Vec<(RecLoc, Vec<u8>)>) {
        let mut seen = vec![];
        let f = LogFiles::open(disk.clone(), dir, roll, |loc, p| {
            seen.push((loc, p.to_vec()));
            Ok(())
        })
        .unwrap();
        (f, seen)
    }

    #[test]
    fn records_come_back_in_order_across_rolls_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let disk: DiskRef = Arc::new(OsDisk::new());
        let (f, seen) = open(&disk, dir.path(), 100);
        assert!(seen.is_empty());
        let mut written = vec![];
        for i in 0..20u8 {
            let p = vec![i; 10 + usize::from(i)];
            let loc = f.append(std::slice::from_ref(&p), &[true], true).unwrap()[0];
            assert_eq!(f.read(loc).unwrap(), Some(p.clone()));
            written.push((loc, p));
        }
        assert!(f.stats().files > 3, "100-byte files roll: {:?}", f.stats());
        drop(f);
        let (_, seen) = open(&disk, dir.path(), 100);
        assert_eq!(seen, written);
    }

    #[test]
    fn a_torn_tail_of_the_head_is_cut_and_appends_continue_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let disk: DiskRef = Arc::new(OsDisk::new());
        let (f, _) = open(&disk, dir.path(), 1 << 20);
        let a = f.append(&[b"first".to_vec()], &[true], true).unwrap()[0];
        let b = f.append(&[b"second".to_vec()], &[true], true).unwrap()[0];
        drop(f);
        // Tear the second record: its last payload byte is wrong.
        let path = dir.path().join(file_name(0));
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        bytes.extend_from_slice(&[0u8; 7]);
        std::fs::write(&path, &bytes).unwrap();
        let (f, seen) = open(&disk, dir.path(), 1 << 20);
        assert_eq!(seen, vec![(a, b"first".to_vec())]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), b.offset, "the head was cut at the bad record");
        let c = f.append(&[b"third".to_vec()], &[true], true).unwrap()[0];
        assert_eq!(c.offset, b.offset);
        drop(f);
        let (_, seen) = open(&disk, dir.path(), 1 << 20);
        assert_eq!(seen, vec![(a, b"first".to_vec()), (c, b"third".to_vec())]);
    }

    #[test]
    fn damage_in_a_file_before_the_head_refuses_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let disk: DiskRef = Arc::new(OsDisk::new());
        let (f, _) = open(&disk, dir.path(), 40);
        for i in 0..4u8 {
            f.append(&[vec![i; 30]], &[true], true).unwrap();
        }
        assert!(f.stats().files >= 2);
        drop(f);
        let path = dir.path().join(file_name(0));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[FILE_HEADER as usize + RECORD_HEADER as usize] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = LogFiles::open(disk, dir.path(), 40, |_, _| Ok(())).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    #[test]
    fn a_rotten_record_is_reported_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let disk: DiskRef = Arc::new(OsDisk::new());
        let (f, _) = open(&disk, dir.path(), 1 << 20);
        let loc = f.append(&[b"payload".to_vec()], &[true], true).unwrap()[0];
        let path = dir.path().join(file_name(0));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[loc.offset as usize + RECORD_HEADER as usize] ^= 4;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(f.read(loc), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn files_are_deleted_oldest_first_once_nothing_in_them_is_live() {
        let dir = tempfile::tempdir().unwrap();
        let disk: DiskRef = Arc::new(OsDisk::new());
        let (f, _) = open(&disk, dir.path(), 60);
        let locs: Vec<RecLoc> = (0..6u8).map(|i| f.append(&[vec![i; 40]], &[true], true).unwrap()[0]).collect();
        let files_before = f.stats().files;
        assert_eq!(files_before, 6, "one 40-byte record per 60-byte file");
        // Free the second file's record: nothing goes, the first is still live.
        f.release(locs[1]);
        assert_eq!(f.collect().unwrap(), 0);
        f.release(locs[0]);
        assert_eq!(f.collect().unwrap(), 2, "the first two files go together");
        // The head stays even when empty of live records.
        for l in &locs[2..] {
            f.release(*l);
        }
        assert_eq!(f.collect().unwrap(), 3);
        assert_eq!(f.stats().files, 1);
        assert_eq!(f.read(locs[0]).unwrap(), None, "a deleted file's record reads as gone");
        drop(f);
        let (_, seen) = open(&disk, dir.path(), 60);
        assert_eq!(seen.len(), 1, "only the head's record is left: {seen:?}");
    }
}
