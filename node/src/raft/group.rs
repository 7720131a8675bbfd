//! One running Raft group on this node, with the operations the rest of the node needs, in
//! tetrad's own terms (no openraft types leak out of here).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{EmptyNode, ReadPolicy, SnapshotPolicy};
use tokio::sync::RwLock;

use super::log_store::GroupLog;
use super::network::GroupNetwork;
use super::peers::PeerBook;
use super::state_machine::{GroupSm, GroupState, SmInner};
use super::types::{Command, Reply, Snapshot, TypeConfig};
use super::wire::{self, RaftRpc, WireError};
use crate::config::RaftTuning;
use crate::seams::net::{NodeId, TransportRef};
use crate::storage::store::{Store, StoreError};

pub type RaftOf<S> = openraft::Raft<TypeConfig, GroupSm<S>>;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WriteError {
    #[error("this node does not lead the group; leader: {0:?}")]
    NotLeader(Option<NodeId>),
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    #[error("group unavailable: {0}")]
    Unavailable(String),
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum GroupError {
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("raft: {0}")]
    Raft(String),
}

/// A snapshot of what a group's Raft instance reports about itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupStatus {
    pub leader: Option<NodeId>,
    pub term: u64,
    pub is_leader: bool,
    pub last_index: u64,
    pub applied_index: u64,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// Matched log index per follower (leader only).
    pub matched: BTreeMap<NodeId, Option<u64>>,
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
}

pub struct Group<S: GroupState> {
    pub name: String,
    pub raft: RaftOf<S>,
    pub sm: Arc<RwLock<SmInner<S>>>,
    /// When this node last accepted a leader's append (or snapshot): the same moment openraft
    /// renews the leader's lease here. Read by the takeover loop (`node/takeover.rs`).
    contact: std::sync::Mutex<Option<tokio::time::Instant>>,
}

/// openraft's config from tetrad's tuning.
pub fn raft_config(group: &str, t: &RaftTuning) -> Result<Arc<openraft::Config>, GroupError> {
    let cfg = openraft::Config {
        cluster_name: group.to_string(),
        heartbeat_interval: t.heartbeat_interval_ms,
        election_timeout_min: t.election_timeout_min_ms,
        election_timeout_max: t.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(t.snapshot_logs_since_last),
        max_in_snapshot_log_to_keep: t.max_in_snapshot_log_to_keep,
        max_payload_entries: t.max_payload_entries,
        install_snapshot_timeout: t.election_timeout_max_ms.max(10_000),
        enable_pre_vote: Some(true),
        ..Default::default()
    };
    cfg.validate().map(Arc::new).map_err(|e| GroupError::Raft(e.to_string()))
}

impl<S: GroupState> Group<S> {
    pub async fn start(
        name: &str,
        store: Arc<Store>,
        transport: TransportRef,
        tuning: &RaftTuning,
        me: NodeId,
        peers: PeerBook,
    ) -> Result<Self, GroupError> {
        let config = raft_config(name, tuning)?;
        let sm = GroupSm::<S>::open(store.clone(), name, peers.clone())?;
        let reader = sm.reader();
        let net = GroupNetwork::new(name, transport, store.incarnation(), Duration::from_secs(120), peers);
        let log = GroupLog::new(store, name).with_max_append_bytes(tuning.max_append_bytes.max(1));
        let raft = openraft::Raft::new(me, config, net, log, sm).await.map_err(|e| GroupError::Raft(e.to_string()))?;
        Ok(Self { name: name.to_string(), raft, sm: reader, contact: std::sync::Mutex::new(None) })
    }

    /// Initialises a new group with `voters`. Returns false when it was already initialised.
    pub async fn initialize(&self, voters: &[NodeId]) -> Result<bool, GroupError> {
        if self.raft.is_initialized().await.map_err(|e| GroupError::Raft(e.to_string()))? {
            return Ok(false);
        }
        let members: BTreeMap<NodeId, EmptyNode> = voters.iter().map(|v| (*v, EmptyNode::default())).collect();
        match self.raft.initialize(members).await {
            Ok(()) => Ok(true),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(false),
            Err(e) => Err(GroupError::Raft(e.to_string())),
        }
    }

    /// (term, leader) as this replica sees them, read in place: `status` clones all of
    /// openraft's metrics (membership, replication progress), and the simulator's
    /// one-leader-per-term monitor asks every replica for this every 50 ms.
    pub fn term_leader(&self) -> (u64, Option<NodeId>) {
        use openraft_rt::WatchReceiver;
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        (m.current_term, m.current_leader)
    }

    pub fn status(&self) -> GroupStatus {
        let m = {
            use openraft_rt::WatchReceiver;
            self.raft.metrics().borrow_watched().clone()
        };
        let mem = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = mem.voter_ids().collect();
        let learners: BTreeSet<NodeId> = mem.learner_ids().collect();
        GroupStatus {
            leader: m.current_leader,
            term: m.current_term,
            is_leader: m.current_leader == Some(m.id),
            last_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            matched: m
                .replication
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.map(|l| l.index)))
                .collect(),
            voters,
            learners,
        }
    }

    /// Proposes a command and waits until it is committed and applied here.
    pub async fn write(&self, cmd: Command) -> Result<(Reply, u64, u64), WriteError> {
        match self.raft.client_write(cmd).await {
            Ok(resp) => Ok((resp.data, resp.log_id.leader_id.term, resp.log_id.index)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(WriteError::NotLeader(f.leader_id)),
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(f))) => Err(WriteError::OutcomeUnknown(
                format!("the leader changed while the write was in flight (new leader {:?})", f.leader_id),
            )),
            Err(RaftError::APIError(e)) => Err(WriteError::Unavailable(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(WriteError::Unavailable(format!("group stopped: {e}"))),
        }
    }

    /// Waits up to `within` for this node to know a leader (an election in progress ends), and
    /// returns it; `None` when none was known in time.
    pub async fn wait_leader(&self, within: Duration) -> Option<NodeId> {
        if let Some(l) = self.status().leader {
            return Some(l);
        }
        self.raft
            .wait(Some(within))
            // A candidate's own vote is committed a moment before it serves as leader, and a new
            // leader refuses writes until a quorum has acked it once (openraft's write lease):
            // wait for both when the leader is this node.
            .metrics(
                |m| match m.current_leader {
                    Some(l) if l == m.id => m.state == openraft::ServerState::Leader && m.last_quorum_acked.is_some(),
                    Some(_) => true,
                    None => false,
                },
                "a known leader",
            )
            .await
            .ok()
            .and_then(|m| m.current_leader)
    }

    /// Returns once this node's state machine reflects every write committed before the call,
    /// confirmed with a quorum (ReadIndex). Fails on a node that does not lead.
    pub async fn read_barrier(&self) -> Result<(), WriteError> {
        match self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(openraft::error::LinearizableReadError::ForwardToLeader(f))) => {
                Err(WriteError::NotLeader(f.leader_id))
            }
            Err(RaftError::APIError(e)) => Err(WriteError::Unavailable(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(WriteError::Unavailable(format!("group stopped: {e}"))),
        }
    }

    pub async fn add_learner(&self, node: NodeId) -> Result<(), WriteError> {
        match self.raft.add_learner(node, EmptyNode::default(), false).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(WriteError::NotLeader(f.leader_id)),
            Err(e) => Err(WriteError::Unavailable(e.to_string())),
        }
    }

    /// Makes `voters` the voter set (joint consensus as openraft does it); removed voters stay
    /// as learners. Every new voter must be a learner already.
    pub async fn change_voters(&self, voters: &[NodeId]) -> Result<(), WriteError> {
        let set: BTreeSet<NodeId> = voters.iter().copied().collect();
        match self.raft.change_membership(openraft::ChangeMembers::ReplaceAllVoters(set), true).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(WriteError::NotLeader(f.leader_id)),
            Err(e) => Err(WriteError::Unavailable(e.to_string())),
        }
    }

    /// Removes learners that the placement no longer wants.
    pub async fn remove_learners(&self, nodes: &[NodeId]) -> Result<(), WriteError> {
        let set: BTreeSet<NodeId> = nodes.iter().copied().collect();
        match self.raft.change_membership(openraft::ChangeMembers::RemoveNodes(set), true).await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(WriteError::NotLeader(f.leader_id)),
            Err(e) => Err(WriteError::Unavailable(e.to_string())),
        }
    }

    /// Asks the leader to hand leadership to `to` (ignored when this node does not lead).
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), GroupError> {
        self.raft.trigger().transfer_leader(to).await.map_err(|e| GroupError::Raft(e.to_string()))
    }

    /// Builds a snapshot now and purges the log up to `upto`, so that members added later are
    /// caught up by the snapshot (a promoted epoch's seeded state lives only there).
    pub async fn snapshot_and_purge(&self, upto: u64) -> Result<(), GroupError> {
        self.raft.trigger().snapshot().await.map_err(|e| GroupError::Raft(e.to_string()))?;
        for _ in 0..200 {
            if self.status().snapshot_index.is_some_and(|s| s >= upto) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.raft.trigger().purge_log(upto).await.map_err(|e| GroupError::Raft(e.to_string()))
    }

    /// Answers a peer's Raft RPC.
    pub async fn handle(&self, rpc: RaftRpc) -> wire::Reply {
        let fail = |e: String| wire::Reply::Error(WireError::Failed(e));
        match rpc {
            RaftRpc::Append(r) => match self.raft.append_entries(r).await {
                Ok(resp) => {
                    if !matches!(resp, openraft::raft::AppendEntriesResponse::HigherVote(_)) {
                        self.touch_contact();
                    }
                    wire::Reply::Append(resp)
                }
                Err(e) => fail(e.to_string()),
            },
            RaftRpc::Vote(r) => self.raft.vote(r).await.map(wire::Reply::Vote).unwrap_or_else(|e| fail(e.to_string())),
            RaftRpc::PreVote(r) => {
                self.raft.pre_vote(r).await.map(wire::Reply::Vote).unwrap_or_else(|e| fail(e.to_string()))
            }
            RaftRpc::Snapshot { vote, meta, data } => {
                // The chunks it references first: openraft reports an install as done.
                if let Err(e) = super::state_machine::prepare_install(&self.sm, &data).await {
                    return fail(format!("snapshot not installed: {e}"));
                }
                match self.raft.install_full_snapshot(vote, Snapshot { meta, snapshot: data }).await {
                    Ok(resp) => {
                        self.touch_contact();
                        wire::Reply::Snapshot(resp)
                    }
                    Err(e) => fail(e.to_string()),
                }
            }
            RaftRpc::TransferLeader(r) => self
                .raft
                .handle_transfer_leader(r)
                .await
                .map(wire::Reply::TransferLeader)
                .unwrap_or_else(|e| fail(e.to_string())),
        }
    }

    fn touch_contact(&self) {
        *self.contact.lock().expect("contact lock") = Some(crate::seams::clock::scheduling_now());
    }

    /// When this node last accepted a leader's append or snapshot; `None` before the first.
    pub fn last_leader_contact(&self) -> Option<tokio::time::Instant> {
        *self.contact.lock().expect("contact lock")
    }

    /// openraft's leader lease on a follower: how long after the last append it refuses to vote
    /// for anyone else (openraft takes `election_timeout_max`).
    pub fn leader_lease(&self) -> Duration {
        Duration::from_millis(self.raft.config().election_timeout_max)
    }

    /// Starts a Pre-Vote round and, if a quorum would grant it, an election. A no-op while this
    /// node still holds a leader's lease or already leads; never disturbs a live leader that a
    /// quorum still hears (their leases refuse the Pre-Vote).
    pub async fn campaign(&self) {
        if let Err(e) = self.raft.trigger().elect(true).await {
            tracing::debug!(group = %self.name, error = %e, "campaign not started");
        }
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(group = %self.name, error = %e, "raft shutdown reported an error");
        }
    }
}
