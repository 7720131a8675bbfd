//! openraft's state machine for any group, generic over what the group replicates.
//!
//! [`GroupState`] is the group-specific part (the meta directory or a tenant's WAL catalog),
//! written without openraft types. [`GroupSm`] does the rest: applied position and membership,
//! persistence through the store's writer, and snapshots, which are whole files written through
//! the disk seam (`snapshots/<group>.snap`, replaced atomically) holding the snapshot's metadata
//! and the state's bytes.
//!
//! A tenant's snapshot holds references to chunks, not their bytes (ARCHITECTURE.md,
//! "Snapshots by reference"). So a build first makes sure this replica holds every chunk it
//! references ([`GroupState::ensure_referenced`], fetching a missing one from peers; no bytes
//! are read), and an install makes every referenced chunk durable here before it installs the
//! rows and the applied position and returns to openraft, which only then reports the install
//! (and `matched`). Both run without the state lock. A build that cannot complete must not
//! reach openraft, which treats a build error as fatal and stops the group: openraft is handed
//! a snapshot that changes nothing and the next build waits [`SNAPSHOT_RETRY_AFTER`]. An
//! install error is fatal too, so the receiving side fetches first ([`prepare_install`], before
//! the snapshot is handed to openraft) and a failure there is an RPC error the sender retries;
//! the install itself then only checks, and fetches what a race may have left out.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use super::peers::PeerBook;
use super::types::{Command, LogId, Reply, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use crate::planted::{self, Bug};
use crate::seams::net::NodeId;
use crate::storage::store::{Store, StoreError, TxnFn};
use crate::storage::versioned;

/// How long after a snapshot build that could not complete the next policy-triggered one waits.
pub const SNAPSHOT_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Attempts an install makes to fetch what [`prepare_install`] left missing before it gives up
/// (an error openraft treats as fatal for the group), and the first pause between two.
const INSTALL_FETCH_ATTEMPTS: u32 = 6;
const INSTALL_FETCH_BACKOFF: Duration = Duration::from_millis(500);

/// The version of the snapshot files this build writes, after [`versioned::SNAPSHOT_MAGIC`]:
/// 2 since a tenant's snapshot holds chunk references (version 1 files, and files from before
/// versions, are still read: their data is a tenant snapshot with bytes, which installs too).
const SNAPSHOT_FILE_VERSION: u8 = 2;

/// How [`GroupState::ensure_referenced`] checks a chunk already here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The file exists (cheap: a build, and the install's last look).
    Exists,
    /// Its bytes are read and match its hash (the receiver's fetch before an install).
    Hash,
}

/// What [`GroupState::ensure_referenced`] did, in chunks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ensured {
    /// Already here (and intact, with [`Check::Hash`]).
    pub present: u64,
    /// Missing here, fetched from a peer.
    pub fetched: u64,
    /// Damaged here, repaired from a peer.
    pub repaired: u64,
}

/// Where an entry sits in its group's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyInfo {
    pub term: u64,
    pub index: u64,
}

/// The replicated state of one kind of group.
pub trait GroupState: Sized + Send + Sync + 'static {
    /// Loads the state persisted for `group` (empty for a new group).
    fn load(store: &Arc<Store>, group: &str) -> Result<Self, StoreError>;
    /// Applies one command; rows to persist are staged in `work` (they commit before the reply
    /// is sent); other durable side effects (chunk files) happen here, synchronously.
    fn apply(
        &mut self,
        store: &Arc<Store>,
        group: &str,
        at: ApplyInfo,
        cmd: &Command,
        work: &mut Vec<TxnFn>,
    ) -> Result<Reply, StoreError>;
    /// Stages the rows that persist state kept as one value (the meta directory), once after a
    /// batch of applies that ran at least one command, rather than once per command in
    /// [`GroupState::apply`]; default: nothing (per-command rows are staged by `apply`).
    fn stage_whole(&self, _group: &str, _work: &mut Vec<TxnFn>) {}
    /// The whole state as bytes, for a snapshot.
    fn snapshot_bytes(&self, store: &Arc<Store>) -> Result<Vec<u8>, StoreError>;
    /// Replaces the state from snapshot bytes, staging the rows to persist in `work`.
    fn install(
        &mut self,
        store: &Arc<Store>,
        group: &str,
        bytes: &[u8],
        work: &mut Vec<TxnFn>,
    ) -> Result<(), StoreError>;
    /// Records that the entry at `at` was applied (for lag accounting); default: nothing.
    fn note_applied(&mut self, _at: ApplyInfo, _proposed_at_ms: Option<u64>) {}
    /// The storage incarnations this state registers for nodes (the meta directory); default:
    /// none. The node's [`PeerBook`] learns them after every apply.
    fn incarnations(&self) -> Vec<(NodeId, u64)> {
        vec![]
    }
    /// A future that makes everything snapshot `bytes` references outside itself durable on
    /// this replica (a tenant's chunks, fetched from the group's members, at most one in memory
    /// at a time), answering what it did, or why it could not. It runs without the state lock.
    /// `None` (the default): a snapshot of this state is self-contained.
    fn ensure_referenced(&self, _bytes: &[u8], _check: Check) -> Option<BoxFuture<'static, Result<Ensured, String>>> {
        None
    }
}

/// State plus the Raft bookkeeping, shared with readers through [`GroupSm::reader`].
#[derive(Debug)]
pub struct SmInner<S> {
    pub state: S,
    pub applied: Option<LogId>,
    pub membership: StoredMembership,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotFile {
    pub(crate) meta: SnapshotMeta,
    #[serde(with = "crate::storage::byte_buf")]
    pub(crate) data: Vec<u8>,
}

pub struct GroupSm<S: GroupState> {
    store: Arc<Store>,
    group: Arc<str>,
    inner: Arc<RwLock<SmInner<S>>>,
    peers: PeerBook,
    /// No policy-triggered snapshot build before this instant (set when one could not complete).
    retry_at: Arc<Mutex<Option<tokio::time::Instant>>>,
    /// Whether this builder was asked for with `force`: openraft then needs a real snapshot.
    forced: bool,
}

impl<S: GroupState> Clone for GroupSm<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            group: self.group.clone(),
            inner: self.inner.clone(),
            peers: self.peers.clone(),
            retry_at: self.retry_at.clone(),
            forced: false,
        }
    }
}

impl<S: GroupState> GroupSm<S> {
    pub fn open(store: Arc<Store>, group: &str, peers: PeerBook) -> Result<Self, StoreError> {
        let state = S::load(&store, group)?;
        peers.learn(state.incarnations());
        let applied = match store.kv_get(group, "applied")? {
            Some(b) => versioned::decode_value(&format!("applied log id of {group}"), &b)?,
            None => None,
        };
        let membership = match store.kv_get(group, "membership")? {
            Some(b) => versioned::decode_value(&format!("membership of {group}"), &b)?,
            None => StoredMembership::default(),
        };
        let inner = Arc::new(RwLock::new(SmInner { state, applied, membership }));
        Ok(Self { store, group: group.into(), inner, peers, retry_at: Arc::new(Mutex::new(None)), forced: false })
    }

    /// Read access to the applied state (for linearizable reads after `ensure_linearizable`).
    pub fn reader(&self) -> Arc<RwLock<SmInner<S>>> {
        self.inner.clone()
    }

    fn snapshot_path(&self) -> PathBuf {
        self.store.root().join("snapshots").join(format!("{}.snap", self.group.replace('/', "_")))
    }

    /// The state's bytes and the metadata they stand for, read under the state lock (rows and
    /// a chunk table: no chunk bytes).
    async fn snapshot_now(&self) -> Result<(SnapshotMeta, Vec<u8>), StoreError> {
        let inner = self.inner.read().await;
        let data = inner.state.snapshot_bytes(&self.store)?;
        Ok((SnapshotMeta { last_log_id: inner.applied, last_membership: inner.membership.clone() }, data))
    }

    /// Runs [`GroupState::ensure_referenced`] for `data` without holding the state lock.
    async fn ensure(&self, data: &[u8], check: Check) -> Result<Ensured, String> {
        let fut = self.inner.read().await.state.ensure_referenced(data, check);
        match fut {
            Some(f) => f.await,
            None => Ok(Ensured::default()),
        }
    }

    /// A build that cannot complete now. Unless openraft insists (`force`: it has no snapshot
    /// and needs one), it gets a snapshot with no log id: it keeps a built snapshot only when it
    /// is newer than its current one, so nothing changes, the log stays, the group runs on, and
    /// the next policy-triggered build waits [`SNAPSHOT_RETRY_AFTER`].
    fn build_later(&self, why: String) -> Result<Snapshot, io::Error> {
        if self.forced {
            tracing::error!(group = %self.group, %why, "cannot build the snapshot openraft requires");
            return Err(io::Error::other(why));
        }
        tracing::error!(group = %self.group, %why, retry_in = ?SNAPSHOT_RETRY_AFTER, "cannot build a snapshot now; keeping the current one and the log");
        *self.retry_at.lock().expect("retry lock") = Some(crate::seams::clock::scheduling_now() + SNAPSHOT_RETRY_AFTER);
        Ok(Snapshot { meta: SnapshotMeta::default(), snapshot: vec![] })
    }

    fn bookkeeping(&self, applied: Option<LogId>, membership: &StoredMembership) -> Vec<TxnFn> {
        vec![
            Store::kv_put(&self.group, "applied", versioned::encode_value(&applied)),
            Store::kv_put(&self.group, "membership", versioned::encode_value(membership)),
        ]
    }
}

impl<S: GroupState> RaftSnapshotBuilder<TypeConfig> for GroupSm<S> {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (meta, data) = match self.snapshot_now().await {
            Ok(built) => built,
            Err(e) => return self.build_later(e.to_string()),
        };
        // Never reference a chunk this replica does not hold: a member that installs the
        // snapshot fetches from the group's members, this one first among them.
        match self.ensure(&data, Check::Exists).await {
            Ok(e) if e.fetched + e.repaired > 0 => {
                tracing::warn!(group = %self.group, fetched = e.fetched, "chunks missing here fetched for the snapshot")
            }
            Ok(_) => {}
            Err(why) => return self.build_later(why),
        }
        let file = SnapshotFile { meta: meta.clone(), data };
        let bytes = encode_snapshot_file(&file);
        let path = self.snapshot_path();
        let disk = self.store.disk().clone();
        crate::storage::store::blocking(|| -> io::Result<()> {
            if let Some(dir) = path.parent() {
                disk.create_dir_all(dir)?;
            }
            disk.write_file_durable(&path, &bytes)
        })?;
        tracing::info!(group = %self.group, last = ?meta.last_log_id, bytes = bytes.len(), "snapshot built");
        Ok(Snapshot { meta, snapshot: file.data })
    }
}

impl<S: GroupState> RaftStateMachine<TypeConfig> for GroupSm<S> {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let inner = self.inner.read().await;
        Ok((inner.applied, inner.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut inner = self.inner.write().await;
        let mut work: Vec<TxnFn> = vec![];
        let mut replies = vec![];
        let mut ran_commands = false;
        while let Some((entry, responder)) = entries.try_next().await? {
            let at = ApplyInfo { term: entry.log_id.leader_id.term, index: entry.log_id.index };
            let reply = match &entry.payload {
                EntryPayload::Blank => {
                    inner.state.note_applied(at, None);
                    Reply::None
                }
                EntryPayload::Normal(cmd) => {
                    ran_commands = true;
                    let store = self.store.clone();
                    let group = self.group.clone();
                    crate::storage::store::blocking(|| inner.state.apply(&store, &group, at, cmd, &mut work))?
                }
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    inner.state.note_applied(at, None);
                    Reply::None
                }
            };
            inner.applied = Some(entry.log_id);
            replies.push((responder, reply));
        }
        if ran_commands {
            inner.state.stage_whole(&self.group, &mut work);
        }
        work.extend(self.bookkeeping(inner.applied, &inner.membership));
        // The applied state is derived from the Raft log, which is durable before anything is
        // applied; a power loss that undoes this commit leaves openraft to apply the same entries
        // again (see `Store::write_derived`). Snapshot installs, below, stay durable writes.
        self.store.write_derived(work).await?;
        self.peers.learn(inner.state.incarnations());
        for (responder, reply) in replies {
            if let Some(r) = responder {
                r.send(reply);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn try_create_snapshot_builder(&mut self, force: bool) -> Option<Self::SnapshotBuilder> {
        if !force {
            let mut retry_at = self.retry_at.lock().expect("retry lock");
            match *retry_at {
                Some(t) if crate::seams::clock::scheduling_now() < t => return None,
                Some(_) => *retry_at = None,
                None => {}
            }
        }
        Some(Self { forced: force, ..self.clone() })
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Vec<u8>) -> Result<(), io::Error> {
        // Every chunk the snapshot references is durable here before the rows and the applied
        // position are, and before openraft hears of the install. `prepare_install` fetched them
        // before openraft got the snapshot; this looks again (files only) and fetches what is
        // still missing, with a bound: an error here stops the group.
        if !planted::on(Bug::InstallBeforeChunks) {
            let mut pause = INSTALL_FETCH_BACKOFF;
            let mut attempt = 1;
            loop {
                match self.ensure(&snapshot, Check::Exists).await {
                    Ok(_) => break,
                    Err(why) if attempt < INSTALL_FETCH_ATTEMPTS => {
                        tracing::warn!(group = %self.group, %why, attempt, "snapshot install waits for its chunks");
                        tokio::time::sleep(pause).await;
                        pause *= 2;
                        attempt += 1;
                    }
                    Err(why) => {
                        tracing::error!(group = %self.group, %why, "snapshot install cannot get its chunks");
                        return Err(io::Error::other(why));
                    }
                }
            }
        }
        let mut inner = self.inner.write().await;
        let mut work = vec![];
        let store = self.store.clone();
        let group = self.group.clone();
        crate::storage::store::blocking(|| inner.state.install(&store, &group, &snapshot, &mut work))?;
        inner.applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        work.extend(self.bookkeeping(inner.applied, &inner.membership));
        // Keep the received snapshot as the current one, so this node can serve it onwards.
        let file = SnapshotFile { meta: meta.clone(), data: snapshot };
        let bytes = encode_snapshot_file(&file);
        let path = self.snapshot_path();
        let disk = self.store.disk().clone();
        crate::storage::store::blocking(|| -> io::Result<()> {
            if let Some(dir) = path.parent() {
                disk.create_dir_all(dir)?;
            }
            disk.write_file_durable(&path, &bytes)
        })?;
        self.store.write(work).await?;
        self.peers.learn(inner.state.incarnations());
        tracing::info!(group = %self.group, last = ?meta.last_log_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let path = self.snapshot_path();
        let bytes = match self.store.disk().read_file(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let file = decode_snapshot_file(&format!("snapshot file of {}", self.group), &bytes)?;
        Ok(Some(Snapshot { meta: file.meta, snapshot: file.data }))
    }
}

/// Before a received snapshot is handed to openraft (`Group::handle`): fetches and verifies
/// every chunk it references that is missing or damaged here, one at a time, without the state
/// lock. What it fetched stays (chunks are content-addressed), so a retried or newer snapshot
/// install skips it; an error is the RPC's answer, and the sender tries again.
pub async fn prepare_install<S: GroupState>(sm: &RwLock<SmInner<S>>, data: &[u8]) -> Result<Ensured, String> {
    if planted::on(Bug::InstallBeforeChunks) {
        return Ok(Ensured::default());
    }
    let fut = sm.read().await.state.ensure_referenced(data, Check::Hash);
    match fut {
        Some(f) => f.await,
        None => Ok(Ensured::default()),
    }
}

/// A snapshot file of [`SNAPSHOT_FILE_VERSION`].
pub(crate) fn encode_snapshot_file(file: &SnapshotFile) -> Vec<u8> {
    let mut head = versioned::SNAPSHOT_MAGIC.to_vec();
    head.push(SNAPSHOT_FILE_VERSION);
    postcard::to_extend(file, head).expect("in-memory values always encode")
}

/// Reads a snapshot file of [`SNAPSHOT_FILE_VERSION`], of version 1 or from before versions
/// (`versioned::decode_snapshot_file`); the data of the older ones is self-describing
/// (a tenant snapshot with bytes), so it installs and is served as it is.
pub(crate) fn decode_snapshot_file(what: &str, b: &[u8]) -> Result<SnapshotFile, StoreError> {
    match b.strip_prefix(versioned::SNAPSHOT_MAGIC.as_slice()) {
        Some([SNAPSHOT_FILE_VERSION, body @ ..]) => {
            postcard::from_bytes(body).map_err(|e| StoreError::Corrupt { what: what.into(), detail: e.to_string() })
        }
        _ => versioned::decode_snapshot_file(what, b),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};

    use super::*;
    use crate::seams::disk::{DiskRef, OsDisk};

    /// A state whose snapshot references something missing here until it is fetched; the
    /// group's name says whether it can be.
    struct Damaged {
        damaged: Arc<AtomicBool>,
        repairable: bool,
    }

    impl GroupState for Damaged {
        fn load(_store: &Arc<Store>, group: &str) -> Result<Self, StoreError> {
            Ok(Damaged { damaged: Arc::new(AtomicBool::new(true)), repairable: group == "repairable" })
        }
        fn apply(
            &mut self,
            _store: &Arc<Store>,
            _group: &str,
            _at: ApplyInfo,
            _cmd: &Command,
            _work: &mut Vec<TxnFn>,
        ) -> Result<Reply, StoreError> {
            Ok(Reply::None)
        }
        fn snapshot_bytes(&self, _store: &Arc<Store>) -> Result<Vec<u8>, StoreError> {
            Ok(b"whole".to_vec())
        }
        fn install(
            &mut self,
            _store: &Arc<Store>,
            _group: &str,
            _bytes: &[u8],
            _work: &mut Vec<TxnFn>,
        ) -> Result<(), StoreError> {
            assert!(!self.damaged.load(Ordering::SeqCst), "installed before what it references is here");
            Ok(())
        }
        fn ensure_referenced(
            &self,
            _bytes: &[u8],
            _check: Check,
        ) -> Option<BoxFuture<'static, Result<Ensured, String>>> {
            let (damaged, repairable) = (self.damaged.clone(), self.repairable);
            Some(Box::pin(async move {
                if !damaged.load(Ordering::SeqCst) {
                    return Ok(Ensured { present: 1, ..Ensured::default() });
                }
                if !repairable {
                    return Err("no peer has chunk 00ab".to_string());
                }
                damaged.store(false, Ordering::SeqCst);
                Ok(Ensured { fetched: 1, ..Ensured::default() })
            }))
        }
    }

    fn open(dir: &std::path::Path, group: &str) -> GroupSm<Damaged> {
        let disk: DiskRef = Arc::new(OsDisk::new());
        Store::init(disk.clone(), dir, "n1", 7).unwrap();
        GroupSm::open(Store::open(disk, dir, "n1").unwrap(), group, PeerBook::default()).unwrap()
    }

    #[tokio::test]
    async fn a_build_first_fetches_what_its_snapshot_references_and_openraft_sees_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path(), "repairable");
        let mut builder = sm.try_create_snapshot_builder(false).await.expect("a builder");
        let snap = builder.build_snapshot().await.expect("openraft never sees the damage");
        assert_eq!(snap.snapshot, b"whole");
        let kept = sm.get_current_snapshot().await.unwrap().expect("the snapshot was written");
        assert_eq!(kept.snapshot, b"whole");
    }

    #[tokio::test(start_paused = true)]
    async fn a_build_that_cannot_complete_changes_nothing_and_the_next_waits() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path(), "beyond repair");
        let mut builder = sm.try_create_snapshot_builder(false).await.expect("a builder");
        let snap = builder.build_snapshot().await.expect("openraft never sees the damage");
        assert_eq!(snap.meta.last_log_id, None, "no log id: openraft keeps the snapshot it has");
        assert!(sm.get_current_snapshot().await.unwrap().is_none(), "nothing was written");

        assert!(sm.try_create_snapshot_builder(false).await.is_none(), "the next policy build waits");
        tokio::time::advance(SNAPSHOT_RETRY_AFTER).await;
        assert!(sm.try_create_snapshot_builder(false).await.is_some(), "and is tried again later");

        // openraft forces a build only when it has no snapshot and needs one: a stand-in would
        // be a lie, so the error is reported.
        let mut forced = sm.try_create_snapshot_builder(true).await.expect("a forced builder");
        assert!(forced.build_snapshot().await.is_err());
    }

    #[tokio::test]
    async fn a_snapshot_file_is_versioned_and_one_written_before_versions_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path(), "repairable");
        let mut builder = sm.try_create_snapshot_builder(false).await.expect("a builder");
        builder.build_snapshot().await.unwrap();
        let disk = sm.store.disk().clone();
        let path = sm.snapshot_path();
        assert!(disk.read_file(&path).unwrap().starts_with(b"TSNP\x02"));
        let snap = sm.get_current_snapshot().await.unwrap().expect("the snapshot is read back");
        assert_eq!(snap.snapshot, b"whole");

        // What the build before snapshots by reference wrote: version 1.
        let meta = SnapshotMeta { last_log_id: Some(LogId::new(3u64.into(), 42)), ..SnapshotMeta::default() };
        let v1 = versioned::encode_snapshot_file(&SnapshotFile { meta: meta.clone(), data: b"v1 bytes".to_vec() });
        assert!(v1.starts_with(b"TSNP\x01"));
        disk.write_file_durable(&path, &v1).unwrap();
        let snap = sm.get_current_snapshot().await.unwrap().expect("the version 1 snapshot is read");
        assert_eq!((snap.meta, snap.snapshot), (meta, b"v1 bytes".to_vec()));

        // What a build before the version wrote: the bare postcard bytes, whose first byte (the
        // tag of the metadata's Option<LogId>) is 0 or 1, so never the magic's `T`.
        for last_log_id in [None, Some(LogId::new(4u64.into(), 99))] {
            let meta = SnapshotMeta { last_log_id, ..SnapshotMeta::default() };
            let legacy =
                postcard::to_stdvec(&SnapshotFile { meta: meta.clone(), data: b"old bytes".to_vec() }).unwrap();
            assert!(legacy[0] <= 1, "{legacy:?}");
            disk.write_file_durable(&path, &legacy).unwrap();
            let snap = sm.get_current_snapshot().await.unwrap().expect("the old snapshot is read");
            assert_eq!((snap.meta, snap.snapshot), (meta, b"old bytes".to_vec()));
        }
    }

    #[tokio::test]
    async fn an_install_fetches_what_the_snapshot_references_before_it_installs() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path(), "repairable");
        let meta = SnapshotMeta { last_log_id: Some(LogId::new(2u64.into(), 10)), ..SnapshotMeta::default() };
        let e = prepare_install(&sm.reader(), b"whole").await.unwrap();
        assert_eq!(e, Ensured { fetched: 1, ..Ensured::default() });
        assert_eq!(prepare_install(&sm.reader(), b"whole").await.unwrap().fetched, 0, "a retry skips it");
        sm.install_snapshot(&meta, b"whole".to_vec()).await.expect("installed");
        assert_eq!(sm.applied_state().await.unwrap().0, meta.last_log_id);
    }

    #[tokio::test(start_paused = true)]
    async fn an_install_whose_references_cannot_be_had_fails_before_it_installs_anything() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path(), "beyond repair");
        assert!(prepare_install(&sm.reader(), b"whole").await.is_err(), "the RPC answers an error");
        let meta = SnapshotMeta { last_log_id: Some(LogId::new(2u64.into(), 10)), ..SnapshotMeta::default() };
        assert!(sm.install_snapshot(&meta, b"whole".to_vec()).await.is_err());
        assert_eq!(sm.applied_state().await.unwrap().0, None, "nothing was installed");
        assert!(sm.get_current_snapshot().await.unwrap().is_none());
    }
}
