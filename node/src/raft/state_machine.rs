//! openraft's state machine for any group, generic over what the group replicates.
//!
//! [`GroupState`] is the group-specific part (the meta directory or a tenant's WAL catalog),
//! written without openraft types. [`GroupSm`] does the rest: applied position and membership,
//! persistence through the store's writer, and snapshots, which are whole files written through
//! the disk seam (`snapshots/<group>.snap`, replaced atomically) holding the snapshot's metadata
//! and the state's bytes.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use super::peers::PeerBook;
use super::types::{Command, LogId, Reply, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use crate::seams::net::NodeId;
use crate::storage::store::{Store, StoreError, TxnFn};

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
    data: Vec<u8>,
}

pub struct GroupSm<S: GroupState> {
    store: Arc<Store>,
    group: Arc<str>,
    inner: Arc<RwLock<SmInner<S>>>,
    peers: PeerBook,
}

impl<S: GroupState> Clone for GroupSm<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            group: self.group.clone(),
            inner: self.inner.clone(),
            peers: self.peers.clone(),
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, b: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(b).map_err(|e| StoreError::Corrupt { what: what.into(), detail: e.to_string() })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("in-memory values always encode")
}

impl<S: GroupState> GroupSm<S> {
    pub fn open(store: Arc<Store>, group: &str, peers: PeerBook) -> Result<Self, StoreError> {
        let state = S::load(&store, group)?;
        peers.learn(state.incarnations());
        let applied = match store.kv_get(group, "applied")? {
            Some(b) => decode("applied log id", &b)?,
            None => None,
        };
        let membership = match store.kv_get(group, "membership")? {
            Some(b) => decode("membership", &b)?,
            None => StoredMembership::default(),
        };
        let inner = Arc::new(RwLock::new(SmInner { state, applied, membership }));
        Ok(Self { store, group: group.into(), inner, peers })
    }

    /// Read access to the applied state (for linearizable reads after `ensure_linearizable`).
    pub fn reader(&self) -> Arc<RwLock<SmInner<S>>> {
        self.inner.clone()
    }

    fn snapshot_path(&self) -> PathBuf {
        self.store.root().join("snapshots").join(format!("{}.snap", self.group.replace('/', "_")))
    }

    fn bookkeeping(&self, applied: Option<LogId>, membership: &StoredMembership) -> Vec<TxnFn> {
        vec![
            Store::kv_put(&self.group, "applied", encode(&applied)),
            Store::kv_put(&self.group, "membership", encode(membership)),
        ]
    }
}

impl<S: GroupState> RaftSnapshotBuilder<TypeConfig> for GroupSm<S> {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (meta, data) = {
            let inner = self.inner.read().await;
            let data = inner.state.snapshot_bytes(&self.store)?;
            (SnapshotMeta { last_log_id: inner.applied, last_membership: inner.membership.clone() }, data)
        };
        let file = SnapshotFile { meta: meta.clone(), data };
        let bytes = encode(&file);
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
        while let Some((entry, responder)) = entries.try_next().await? {
            let at = ApplyInfo { term: entry.log_id.leader_id.term, index: entry.log_id.index };
            let reply = match &entry.payload {
                EntryPayload::Blank => {
                    inner.state.note_applied(at, None);
                    Reply::None
                }
                EntryPayload::Normal(cmd) => {
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
        work.extend(self.bookkeeping(inner.applied, &inner.membership));
        self.store.write(work).await?;
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
        let bytes = encode(&file);
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
        let file: SnapshotFile = decode("snapshot file", &bytes)?;
        Ok(Some(Snapshot { meta: file.meta, snapshot: file.data }))
    }
}
