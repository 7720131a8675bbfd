//! Append-only record files: the byte layer under the node's Raft log ([`super::raft_log`]).
//!
//! A node's Raft log records go, for every group it hosts, into one sequence of files
//! `raftlog/<seq>.log` (seq in 16 hex digits), each opened through the disk seam as a
//! [`RandomAccessFile`]. Only the newest file (the head) is appended to; it rolls to a new
//! file once it holds `roll_bytes`. Why not redb: see ARCHITECTURE.md "Storage".
//!
//! Layout:
//! - a file starts with a 16-byte header: `TETRADLG` and its seq (big-endian);
//! - then batches, one per append: `batch magic u32 | len u32 | crc32 u32` (little-endian) and
//!   `len` bytes of records, the crc covering the length field and those bytes;
//! - a record: `record magic u32 | len u32 | crc32 u32` and `len` payload bytes, with its own crc,
//!   so one record can be read and checked on its own.
//!
//! Durability: [`LogFiles::append`] writes one batch with one write and, when asked, one
//! `sync_data`, and returns only after that sync. The store's writer appends a batch only after
//! the previous one's sync returned, so at a crash at most the last batch is unsynced.
//! Crash recovery ([`LogFiles::open`]): every file but the head was synced whole before the head
//! rolled past it, so a bad batch there is damage and the open fails. In the head, a bad batch
//! (short, wrong magic, wrong crc: what a torn or lost unsynced write leaves) ends the log when no
//! valid batch follows it: the file is cut there and synced before anything is appended after it,
//! and everything cut was never reported durable. A bad batch with a valid one after it is damage
//! to synced bytes (bit rot), and the open fails rather than drop acknowledged entries.

//! Space: the owner tells which records are still live ([`LogFiles::release`]); files are
//! deleted oldest first once nothing live is left in them ([`LogFiles::collect`]). Deleting only
//! a prefix keeps replay sound: a record that cancels older ones (a truncation) is never deleted
//! before the records it cancels.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::store::{blocking, StoreError};
use crate::seams::disk::{DiskRef, RandomAccessFile};

const FILE_MAGIC: &[u8; 8] = b"TETRADLG";
const FILE_HEADER: u64 = 16;
const RECORD_MAGIC: u32 = 0x7e7a_d10c;
const BATCH_MAGIC: u32 = 0x7e7a_ba7c;
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
    backend: Arc<dyn RandomAccessFile>,
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

fn header(magic: u32, len: u32, body: &[u8]) -> [u8; RECORD_HEADER as usize] {
    let mut h = [0u8; RECORD_HEADER as usize];
    h[..4].copy_from_slice(&magic.to_le_bytes());
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[8..].copy_from_slice(&crc(len, body).to_le_bytes());
    h
}

/// Checks the `magic | len | crc` header at the start of `bytes` against the body after it;
/// returns the body.
fn check(magic: u32, bytes: &[u8]) -> Option<&[u8]> {
    let h = bytes.get(..RECORD_HEADER as usize)?;
    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    if word(0) != magic || word(4) == 0 {
        return None;
    }
    let body = bytes.get(RECORD_HEADER as usize..RECORD_HEADER as usize + word(4) as usize)?;
    (crc(word(4), body) == word(8)).then_some(body)
}

/// The payload lengths of a batch, or why it cannot be written. Checked before anything is
/// written, so a refused batch leaves the log as it was.
fn lengths(payloads: &[Vec<u8>]) -> Result<(Vec<u32>, u32), StoreError> {
    let too_large = |n: usize| StoreError::Io(format!("a raft log record of {n} bytes is too large"));
    let mut lens = Vec::with_capacity(payloads.len());
    let mut total: u64 = 0;
    for p in payloads {
        let len =
            u32::try_from(p.len()).ok().filter(|l| *l > 0 && *l <= MAX_PAYLOAD).ok_or_else(|| too_large(p.len()))?;
        total += RECORD_HEADER + u64::from(len);
        lens.push(len);
    }
    let total = u32::try_from(total).map_err(|_| too_large(total as usize))?;
    Ok((lens, total))
}

/// Why a record could not be read where one was expected.
enum Bad {
    /// Nothing (or not enough) written there: the end of the log, or a torn tail.
    End,
    /// Bytes that are not a valid record.
    Garbage(String),
}

/// Reads and checks the record at `offset` of a file of `file_len` bytes.
fn read_record(b: &dyn RandomAccessFile, offset: u64, file_len: u64) -> Result<Result<Vec<u8>, Bad>, std::io::Error> {
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
                let backend: Arc<dyn RandomAccessFile> =
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

    /// Scans one file; returns the length up to its last good batch (the head is cut there).
    fn recover(
        b: &dyn RandomAccessFile,
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
            if !is_head || file_len > FILE_HEADER {
                return Err(corrupt("bad file header".into()));
            }
            // A head whose header never became durable holds nothing else.
            Self::write_header(b, path, seq)?;
            return Ok(FILE_HEADER);
        }
        // The batches: read whole, one at a time.
        let mut at = FILE_HEADER;
        while at < file_len {
            let batch = Self::read_batch(b, path, at, file_len)?;
            let Some(batch) = batch else {
                if !is_head {
                    return Err(corrupt(format!("bad batch at byte {at} of a file that was synced whole")));
                }
                if let Some(next) = Self::find_batch_after(b, path, at, file_len)? {
                    return Err(corrupt(format!(
                        "bad batch at byte {at}, but a valid one follows at byte {next}: synced bytes are damaged"
                    )));
                }
                tracing::warn!(file = %path.display(), at, cut = file_len - at, "raft log ends in a torn or unsynced write; cutting it");
                b.set_len(at).map_err(|e| io("cut", path, e))?;
                b.sync_data().map_err(|e| io("sync", path, e))?;
                return Ok(at);
            };
            let body_at = at + RECORD_HEADER;
            let mut i = 0usize;
            while i < batch.len() {
                let payload = check(RECORD_MAGIC, &batch[i..]).ok_or_else(|| {
                    corrupt(format!("bad record at byte {} inside a valid batch", body_at + i as u64))
                })?;
                let loc = RecLoc { file: seq, offset: body_at + i as u64, len: payload.len() as u32 };
                visit(loc, payload)?;
                i += loc.size() as usize;
            }
            at = body_at + batch.len() as u64;
        }
        Ok(at)
    }

    /// The body of the batch at `at`, or `None` when there is no valid batch there.
    fn read_batch(
        b: &dyn RandomAccessFile,
        path: &Path,
        at: u64,
        file_len: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        if at + RECORD_HEADER > file_len {
            return Ok(None);
        }
        let mut h = [0u8; RECORD_HEADER as usize];
        b.read(at, &mut h).map_err(|e| io("read", path, e))?;
        let len = u64::from(u32::from_le_bytes([h[4], h[5], h[6], h[7]]));
        if u32::from_le_bytes([h[0], h[1], h[2], h[3]]) != BATCH_MAGIC || at + RECORD_HEADER + len > file_len {
            return Ok(None);
        }
        let mut bytes = vec![0u8; (RECORD_HEADER + len) as usize];
        b.read(at, &mut bytes).map_err(|e| io("read", path, e))?;
        Ok(check(BATCH_MAGIC, &bytes).is_some().then(|| bytes.split_off(RECORD_HEADER as usize)))
    }

    /// The offset of a valid batch after a bad one at `bad`, if any (a torn tail has none: the
    /// store's writer syncs each batch before it writes the next).
    fn find_batch_after(
        b: &dyn RandomAccessFile,
        path: &Path,
        bad: u64,
        file_len: u64,
    ) -> Result<Option<u64>, StoreError> {
        let mut rest = vec![0u8; (file_len - bad) as usize];
        b.read(bad, &mut rest).map_err(|e| io("read", path, e))?;
        let magic = BATCH_MAGIC.to_le_bytes();
        for i in 1..rest.len().saturating_sub(RECORD_HEADER as usize - 1) {
            if rest[i..i + 4] == magic && check(BATCH_MAGIC, &rest[i..]).is_some() {
                return Ok(Some(bad + i as u64));
            }
        }
        Ok(None)
    }

    fn write_header(b: &dyn RandomAccessFile, path: &Path, seq: u64) -> Result<(), StoreError> {
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
        let backend: Arc<dyn RandomAccessFile> =
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
        let (lens, total) = lengths(payloads)?;
        let mut head = lock(&self.head);
        if let Some(why) = &head.poisoned {
            return Err(StoreError::Io(format!("the raft log stopped taking writes after an earlier failure: {why}")));
        }
        let result = blocking(|| self.append_locked(&mut head, payloads, &lens, total, live, sync));
        if let Err(e) = &result {
            head.poisoned = Some(e.to_string());
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn append_locked(
        &self,
        head: &mut Head,
        payloads: &[Vec<u8>],
        lens: &[u32],
        total: u32,
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
        let mut buf = Vec::with_capacity(RECORD_HEADER as usize + total as usize);
        buf.extend_from_slice(&[0u8; RECORD_HEADER as usize]);
        let mut locs = Vec::with_capacity(payloads.len());
        for (p, len) in payloads.iter().zip(lens) {
            locs.push(RecLoc { file: head.seq, offset: start + buf.len() as u64, len: *len });
            buf.extend_from_slice(&header(RECORD_MAGIC, *len, p));
            buf.extend_from_slice(p);
        }
        let batch_header = header(BATCH_MAGIC, total, &buf[RECORD_HEADER as usize..]);
        buf[..RECORD_HEADER as usize].copy_from_slice(&batch_header);
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

    /// The oldest file, when there are more than `keep` files and moving its live records to
    /// the head costs less than half of the dead bytes its deletion starts to give back (files
    /// are deleted only in order, so a live oldest file holds up every dead file behind it).
    /// Each byte copied thus frees at least two, and a dense file that is never purged (a large
    /// segment of a quiet tenant) is carried forward instead of pinning the log.
    pub fn sparse_oldest(&self, keep: usize) -> Option<u64> {
        let head = lock(&self.head).seq;
        let files = lock(&self.files);
        if files.by_seq.len() <= keep {
            return None;
        }
        let (&seq, oldest) = files.by_seq.first_key_value()?;
        if seq == head || oldest.live == 0 {
            return None;
        }
        let dead: u64 = files
            .by_seq
            .iter()
            .filter(|(s, _)| **s != head)
            .map(|(_, f)| f.len.saturating_sub(FILE_HEADER + f.live))
            .sum();
        (oldest.live * 2 < dead).then_some(seq)
    }

    /// Why appends stopped, if they did.
    pub fn failed(&self) -> Option<String> {
        lock(&self.head).poisoned.clone()
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
        let cut_at = b.offset - RECORD_HEADER;
        assert_eq!(std::fs::metadata(&path).unwrap().len(), cut_at, "the head was cut at the bad batch");
        let c = f.append(&[b"third".to_vec()], &[true], true).unwrap()[0];
        assert_eq!(c.offset, b.offset, "the next batch starts where the bad one did");
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
        assert!(err.to_string().contains("bad batch"), "{err}");
    }

    #[test]
    fn damage_to_synced_bytes_of_the_head_refuses_the_open_instead_of_cutting() {
        let dir = tempfile::tempdir().unwrap();
        let disk: DiskRef = Arc::new(OsDisk::new());
        let (f, _) = open(&disk, dir.path(), 1 << 20);
        let a = f.append(&[b"first".to_vec()], &[true], true).unwrap()[0];
        f.append(&[b"second".to_vec()], &[true], true).unwrap();
        drop(f);
        // Bit rot in the first batch; the second, synced after it, is intact.
        let path = dir.path().join(file_name(0));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[a.offset as usize + RECORD_HEADER as usize] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let err = LogFiles::open(disk, dir.path(), 1 << 20, |_, _| Ok(())).unwrap_err();
        assert!(err.to_string().contains("a valid one follows"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing was cut");
    }

    #[test]
    fn a_refused_oversized_record_leaves_the_log_writable() {
        let dir = tempfile::tempdir().unwrap();
        let disk: DiskRef = Arc::new(OsDisk::new());
        let (f, _) = open(&disk, dir.path(), 1 << 20);
        assert!(f.append(&[vec![]], &[true], true).is_err(), "an empty record is refused");
        assert_eq!(f.failed(), None);
        let loc = f.append(&[b"ok".to_vec()], &[true], true).unwrap()[0];
        assert_eq!(f.read(loc).unwrap(), Some(b"ok".to_vec()));
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
