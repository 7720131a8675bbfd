//! openraft's log storage for one group, over the node's shared [`Store`]: entries in the node's
//! Raft log files ([`crate::storage::raft_log`]), the vote and the purge marker in redb.
//!
//! Appends go through the store's writer, so they are fsync'd (and group-committed with other
//! groups' appends) before openraft is told the I/O completed: a follower answers an append only
//! after its entries are on stable storage.
//!
//! `append` does not wait for that commit, as openraft's contract asks: it queues the entries
//! with the writer, keeps them in memory (`pending`) so that they are readable at once, and
//! reports the flush through openraft's callback when the commit is durable. openraft meanwhile
//! goes on (a follower applies what it learned was committed, and that apply joins the same
//! store commit).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;

use super::types::{Entry, LogId, TypeConfig, Vote};
use crate::storage::raft_log::LogOp;
use crate::storage::store::{Store, StoreError};
use crate::storage::versioned;

/// Entries queued with the store's writer whose commit has not completed, by index.
type Pending = Arc<Mutex<BTreeMap<u64, Entry>>>;

/// One group's log, vote and purge marker.
#[derive(Clone)]
pub struct GroupLog {
    store: Arc<Store>,
    group: Arc<str>,
    /// Appended entries not yet committed by the writer: read from here until they are.
    pending: Pending,
}

fn lock(p: &Pending) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
    p.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl GroupLog {
    pub fn new(store: Arc<Store>, group: &str) -> Self {
        Self { store, group: group.into(), pending: Arc::default() }
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, what: &str, bytes: &[u8]) -> Result<T, io::Error> {
        postcard::from_bytes(bytes).map_err(|e| {
            io::Error::from(StoreError::Corrupt {
                what: format!("{what} of group {}", self.group),
                detail: e.to_string(),
            })
        })
    }

    /// A value of [`versioned::RAFT_KV_KEYS`], in its versioned encoding.
    fn read_kv<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, io::Error> {
        match self.store.kv_get(&self.group, key)? {
            None => Ok(None),
            Some(b) => Ok(Some(versioned::decode_value(&format!("{key} of group {}", self.group), &b)?)),
        }
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, io::Error> {
        // Pending entries come after everything committed (truncation drops pending entries
        // from the truncation point on).
        if let Some((_, e)) = lock(&self.pending).last_key_value() {
            return Ok(Some(e.log_id));
        }
        let log = self.store.raft_log();
        let Some((_, last)) = log.bounds(&self.group) else { return Ok(None) };
        match log.read(&self.group, last, last)?.pop() {
            None => Ok(None),
            Some((_, bytes)) => Ok(Some(self.decode::<Entry>("log entry", bytes.bytes())?.log_id)),
        }
    }
}

impl RaftLogReader<TypeConfig> for GroupLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        use std::ops::Bound;
        let lo = match range.start_bound() {
            Bound::Included(&x) => x,
            Bound::Excluded(&x) => x + 1,
            Bound::Unbounded => 0,
        };
        let hi = match range.end_bound() {
            Bound::Included(&x) => x,
            Bound::Excluded(&0) => return Ok(vec![]),
            Bound::Excluded(&x) => x - 1,
            Bound::Unbounded => u64::MAX,
        };
        if lo > hi {
            return Ok(vec![]);
        }
        // Pending entries in the range, taken first: a committed row at the same index is
        // older (it is being replaced after a truncation) or the same entry.
        let mut out: BTreeMap<u64, Entry> = lock(&self.pending).range(lo..=hi).map(|(i, e)| (*i, e.clone())).collect();
        let committed_hi = out.keys().next().map_or(hi, |first| first.saturating_sub(1).min(hi));
        if lo <= committed_hi && out.len() as u64 != hi.saturating_sub(lo).saturating_add(1) {
            for (at, bytes) in self.store.raft_log().read(&self.group, lo, committed_hi)? {
                if let std::collections::btree_map::Entry::Vacant(slot) = out.entry(at) {
                    slot.insert(self.decode("log entry", bytes.bytes())?);
                }
            }
        }
        Ok(out.into_values().collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.read_kv("vote")
    }
}

impl RaftLogStorage<TypeConfig> for GroupLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let purged: Option<LogId> = self.read_kv("purged")?;
        if let Some(p) = purged {
            // A purge whose marker became durable before the node stopped may not have reached
            // the log files: replay brought those entries back.
            self.store.raft_log().purge_upto(&self.group, p.index);
        }
        let last = self.last_entry_log_id()?.or(purged);
        Ok(LogState { last_purged_log_id: purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let bytes = versioned::encode_value(vote);
        self.store.write(vec![Store::kv_put(&self.group, "vote", bytes)]).await?;
        Ok(())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = vec![];
        let mut queued = vec![];
        for e in entries {
            rows.push((e.log_id.index, postcard::to_stdvec(&e).map_err(io::Error::other)?));
            queued.push(e);
        }
        let ids: Vec<LogId> = queued.iter().map(|e| e.log_id).collect();
        let op = LogOp::Entries { group: self.group.clone(), entries: rows };
        {
            let mut pending = lock(&self.pending);
            for e in queued {
                pending.insert(e.log_id.index, e);
            }
        }
        // The callback fires only after the batch containing these entries is durable.
        #[cfg(feature = "planted-bugs")]
        let callback = crate::planted::report_before_sync(callback);
        #[cfg(not(feature = "planted-bugs"))]
        let callback = Some(callback);
        let pending = self.pending.clone();
        let group = self.group.clone();
        let then: crate::storage::store::ThenFn = Box::new(move |res| {
            // Committed (now readable from the store) or failed: either way no longer pending,
            // unless a later append has replaced the entry at that index.
            {
                let mut p = lock(&pending);
                for id in &ids {
                    if p.get(&id.index).map(|e| e.log_id) == Some(*id) {
                        p.remove(&id.index);
                    }
                }
            }
            if let Err(e) = &res {
                tracing::error!(group = %group, error = %e, "log append failed");
            }
            if let Some(callback) = callback {
                callback.io_completed(res.map_err(io::Error::from));
            }
        });
        self.store.log_write_then(vec![op], then).await;
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map(|l| l.index + 1).unwrap_or(0);
        // Queued appends at or past `from` still commit first (the writer keeps order); the
        // removal below, queued after them, deletes them again.
        lock(&self.pending).split_off(&from);
        self.store.log_write(vec![LogOp::TruncateFrom { group: self.group.clone(), from }]).await?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let group = self.group.clone();
        let upto = log_id.index;
        // openraft purges only applied entries, which are flushed; drop any stale copy anyway.
        {
            let mut p = lock(&self.pending);
            let keep = p.split_off(&(upto + 1));
            *p = keep;
        }
        let marker = versioned::encode_value(&log_id);
        // The marker is durable before the entries are let go: a restart in between finds the
        // entries again in the files and drops them by the marker (`get_log_state`).
        self.store.write(vec![Store::kv_put(&group, "purged", marker)]).await?;
        self.store.raft_log().purge_upto(&group, upto);
        Ok(())
    }
}

/// Drops from the log index, for every group on the node, the entries its durable purge marker
/// covers. Replaying the log files brings back purged entries still in a file that was not
/// deleted yet; a running group drops them when openraft asks for its log state, but a group that
/// never runs again (a sealed epoch's) would otherwise keep them live and carried forward by the
/// log's compaction. Called once when the node opens its store.
pub fn apply_purge_markers(store: &Store) -> Result<usize, StoreError> {
    use redb::{ReadableDatabase, ReadableTable};
    let mut marks: Vec<(String, u64)> = vec![];
    {
        let txn = store.db().begin_read().map_err(StoreError::db)?;
        let kv = txn.open_table(crate::storage::store::KV).map_err(StoreError::db)?;
        for item in kv.iter().map_err(StoreError::db)? {
            let (k, v) = item.map_err(StoreError::db)?;
            let (group, key) = k.value();
            if key == "purged" {
                let id: LogId = versioned::decode_value(&format!("purged log id of {group}"), v.value())?;
                marks.push((group.to_string(), id.index));
            }
        }
    }
    for (group, upto) in &marks {
        store.raft_log().purge_upto(group, *upto);
    }
    Ok(marks.len())
}

/// One entry of a group's durable log, read without running the group.
#[derive(Clone, Debug)]
pub struct DurableEntry {
    pub term: u64,
    pub index: u64,
    /// The command, for a normal entry (blank and membership entries carry none).
    pub command: Option<super::types::Command>,
}

/// A stopped (sealed) group's durable log: where it ends and what it applied.
#[derive(Clone, Debug, Default)]
pub struct DurableLog {
    /// The last durable entry's (term, index), or the last purged one when the log is empty.
    pub last: Option<(u64, u64)>,
    /// The state machine's applied position.
    pub applied: Option<(u64, u64)>,
    /// Entries after the applied position, in order: durable, possibly never committed.
    pub unapplied: Vec<DurableEntry>,
}

/// Reads a group's durable log from the store. The group must not be running (its replica is
/// sealed), so that what is read is what stays.
pub fn read_durable_log(store: &Arc<Store>, group: &str) -> Result<DurableLog, StoreError> {
    let decode = |what: &str, b: &[u8]| -> Result<Entry, StoreError> {
        postcard::from_bytes(b)
            .map_err(|e| StoreError::Corrupt { what: format!("{what} of group {group}"), detail: e.to_string() })
    };
    let applied: Option<LogId> = match store.kv_get(group, "applied")? {
        Some(b) => versioned::decode_value(&format!("applied log id of {group}"), &b)?,
        None => None,
    };
    // `purge` writes the marker as a bare log id (see `GroupLog::purge`).
    let purged: Option<LogId> = match store.kv_get(group, "purged")? {
        Some(b) => Some(versioned::decode_value(&format!("purged log id of {group}"), &b)?),
        None => None,
    };
    let from = applied.map(|a| a.index + 1).unwrap_or(0);
    let mut unapplied = vec![];
    let mut last = purged.map(|p| (p.leader_id.term, p.index));
    if let Some(a) = applied {
        last = last.max(Some((a.leader_id.term, a.index)));
    }
    for (_, bytes) in store.raft_log().read(group, from, u64::MAX)? {
        let e = decode("log entry", bytes.bytes())?;
        last = Some((e.log_id.leader_id.term, e.log_id.index));
        let command = match e.payload {
            openraft::EntryPayload::Normal(c) => Some(c),
            _ => None,
        };
        unapplied.push(DurableEntry { term: e.log_id.leader_id.term, index: e.log_id.index, command });
    }
    Ok(DurableLog { last, applied: applied.map(|a| (a.leader_id.term, a.index)), unapplied })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::seams::disk::{DiskRef, OsDisk};

    #[tokio::test]
    async fn purge_markers_drop_replayed_entries_of_every_group_when_the_store_opens() {
        let dir = tempfile::tempdir().unwrap();
        let disk: DiskRef = Arc::new(OsDisk::new());
        Store::init(disk.clone(), dir.path(), "n1", 7).unwrap();
        let store = Store::open(disk.clone(), dir.path(), "n1").unwrap();
        let entries = (1..=10u64).map(|i| (i, vec![i as u8; 8])).collect();
        store.log_write(vec![LogOp::Entries { group: "t/sealed/1".into(), entries }]).await.unwrap();
        // The purge of a group that then stops for good (a sealed epoch): the marker is durable,
        // the entries are still in the log file.
        let marker = LogId::new(1u64.into(), 6);
        store.write(vec![Store::kv_put("t/sealed/1", "purged", versioned::encode_value(&marker))]).await.unwrap();
        drop(store);
        tokio::task::yield_now().await;
        let store = Store::open(disk, dir.path(), "n1").unwrap();
        assert_eq!(store.raft_log().bounds("t/sealed/1"), Some((1, 10)), "replay brings the purged entries back");
        assert_eq!(apply_purge_markers(&store).unwrap(), 1);
        assert_eq!(store.raft_log().bounds("t/sealed/1"), Some((7, 10)));
    }

    #[tokio::test]
    async fn a_store_written_before_values_were_versioned_opens_with_its_vote_and_purge_marker() {
        let dir = tempfile::tempdir().unwrap();
        let disk: DiskRef = Arc::new(OsDisk::new());
        Store::init(disk.clone(), dir.path(), "n1", 7).unwrap();
        let vote = Vote::new(3, 2);
        let marker = LogId::new(2u64.into(), 6);
        // As the previous build wrote them: bare postcard bytes, and no store format.
        Store::write_legacy_rows(
            &disk,
            dir.path(),
            &[
                ("g", "vote", postcard::to_stdvec(&vote).unwrap()),
                ("g", "purged", postcard::to_stdvec(&marker).unwrap()),
            ],
        );
        let store = Store::open(disk.clone(), dir.path(), "n1").unwrap();
        let mut log = GroupLog::new(store.clone(), "g");
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        assert_eq!(log.get_log_state().await.unwrap().last_purged_log_id, Some(marker));
        assert_eq!(read_durable_log(&store, "g").unwrap().last, Some((2, 6)));
        assert_eq!(apply_purge_markers(&store).unwrap(), 1);

        // New writes are in the versioned form, and read back after a reopen.
        let newer = Vote::new(4, 1);
        log.save_vote(&newer).await.unwrap();
        assert_eq!(store.kv_get("g", "vote").unwrap(), Some(versioned::encode_value(&newer)));
        drop((log, store));
        tokio::task::yield_now().await;
        let store = Store::open(disk, dir.path(), "n1").unwrap();
        assert_eq!(GroupLog::new(store, "g").read_vote().await.unwrap(), Some(newer));
    }
}
