//! openraft's state machine for any group, generic over what the group replicates.
//!
//! [`GroupState`] is the group-specific part (the meta directory or a tenant's WAL catalog),
//! written without openraft types. [`GroupSm`] does the rest: applied position and membership,
//! persistence through the store's writer, and snapshots, which are whole files written through
//! the disk seam (`snapshots/<group>.snap`, replaced atomically) holding the snapshot's metadata
//! and the state's bytes.
//!
//! A snapshot build that fails because the state is damaged (a tenant's chunk rotted on this
//! replica) must not reach openraft, which treats a build error as fatal and stops the group:
//! the state repairs itself ([`GroupState::repair_for_snapshot`]) and the build is tried once
//! more; if it still cannot complete, openraft is handed a snapshot that changes nothing and the
//! next build waits [`SNAPSHOT_RETRY_AFTER`].

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
use crate::seams::net::NodeId;
use crate::storage::store::{Store, StoreError, TxnFn};
use crate::storage::versioned;

/// How long after a snapshot build that could not complete the next policy-triggered one waits.
pub const SNAPSHOT_RETRY_AFTER: Duration = Duration::from_secs(5);

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
    /// Repairs what made [`GroupState::snapshot_bytes`] fail, where the state can (a tenant
    /// fetches chunks that rotted or went missing here again from its peers), answering how many
    /// things it repaired or why it could not. The future runs in the snapshot-building task,
    /// without the state lock. `None` (the default): nothing is repairable, the error stands.
    fn repair_for_snapshot(&self) -> Option<BoxFuture<'static, Result<u64, String>>> {
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
struct SnapshotFile {
    meta: SnapshotMeta,
    #[serde(with = "crate::storage::byte_buf")]
    data: Vec<u8>,
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

    /// The state's bytes and the metadata they stand for, read under the state lock.
    async fn snapshot_now(&self) -> Result<(SnapshotMeta, Vec<u8>), StoreError> {
        let inner = self.inner.read().await;
        let data = inner.state.snapshot_bytes(&self.store)?;
        Ok((SnapshotMeta { last_log_id: inner.applied, last_membership: inner.membership.clone() }, data))
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
            Err(e) => {
                let Some(repair) = self.inner.read().await.state.repair_for_snapshot() else {
                    return Err(e.into());
                };
                tracing::warn!(group = %self.group, error = %e, "snapshot build found damaged state; repairing it");
                match repair.await {
                    Ok(repaired) => tracing::info!(group = %self.group, repaired, "state repaired for the snapshot"),
                    Err(why) => return self.build_later(why),
                }
                match self.snapshot_now().await {
                    Ok(built) => built,
                    Err(e) => return self.build_later(e.to_string()),
                }
            }
        };
        let file = SnapshotFile { meta: meta.clone(), data };
        let bytes = versioned::encode_snapshot_file(&file);
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
        let bytes = versioned::encode_snapshot_file(&file);
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
        let file: SnapshotFile = versioned::decode_snapshot_file(&format!("snapshot file of {}", self.group), &bytes)?;
        Ok(Some(Snapshot { meta: file.meta, snapshot: file.data }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};

    use super::*;
    use crate::seams::disk::{DiskRef, OsDisk};

    /// A state whose snapshot fails until it is repaired; the group's name says whether it can be.
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
            if self.damaged.load(Ordering::SeqCst) {
                return Err(StoreError::Io("chunk 00ab is corrupt on this replica".into()));
            }
            Ok(b"whole".to_vec())
        }
        fn install(
            &mut self,
            _store: &Arc<Store>,
            _group: &str,
            _bytes: &[u8],
            _work: &mut Vec<TxnFn>,
        ) -> Result<(), StoreError> {
            Ok(())
        }
        fn repair_for_snapshot(&self) -> Option<BoxFuture<'static, Result<u64, String>>> {
            let (damaged, repairable) = (self.damaged.clone(), self.repairable);
            Some(Box::pin(async move {
                if !repairable {
                    return Err("no peer has a healthy copy".to_string());
                }
                damaged.store(false, Ordering::SeqCst);
                Ok(1)
            }))
        }
    }

    fn open(dir: &std::path::Path, group: &str) -> GroupSm<Damaged> {
        let disk: DiskRef = Arc::new(OsDisk::new());
        Store::init(disk.clone(), dir, "n1", 7).unwrap();
        GroupSm::open(Store::open(disk, dir, "n1").unwrap(), group, PeerBook::default()).unwrap()
    }

    #[tokio::test]
    async fn a_damaged_state_is_repaired_and_the_snapshot_built_without_an_error() {
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
        assert!(disk.read_file(&path).unwrap().starts_with(b"TSNP\x01"));

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
}
