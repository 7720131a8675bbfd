//! What crosses the node-to-node network: one request and one reply per call, encoded with
//! postcard. Production carries these bytes over QUIC; the simulator carries the same bytes.

use serde::{Deserialize, Serialize};

use super::types::{SnapshotMeta, TypeConfig, Vote};
use crate::meta::state::{MetaCommand, MetaReply};
use crate::seams::net::NodeId;

pub type AppendRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
pub type AppendResponse = openraft::raft::AppendEntriesResponse<TypeConfig>;
pub type VoteRequest = openraft::raft::VoteRequest<TypeConfig>;
pub type VoteResponse = openraft::raft::VoteResponse<TypeConfig>;
pub type SnapshotResponse = openraft::raft::SnapshotResponse<TypeConfig>;
pub type TransferLeaderRequest = openraft::raft::TransferLeaderRequest<TypeConfig>;
pub type TransferLeaderResponse = openraft::raft::TransferLeaderResponse<TypeConfig>;

/// Every request carries the sender's storage incarnation, so a receiver can refuse a node that
/// was wiped and came back under its old id.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub from_incarnation: u64,
    pub body: Request,
}

/// Every reply carries the responder's storage incarnation, so a caller can ignore the answer
/// of a node that was wiped and came back under its old id (its vote above all).
#[derive(Debug, Serialize, Deserialize)]
pub struct ReplyEnvelope {
    pub from_incarnation: u64,
    pub body: Reply,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpc {
    Append(AppendRequest),
    Vote(VoteRequest),
    PreVote(VoteRequest),
    Snapshot {
        vote: Vote,
        meta: SnapshotMeta,
        #[serde(with = "crate::storage::byte_buf")]
        data: Vec<u8>,
    },
    TransferLeader(TransferLeaderRequest),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// A Raft RPC for one group.
    Raft { group: String, rpc: RaftRpc },
    /// Propose a meta command; answered by the meta leader (or refused with its id).
    MetaPropose { cmd: MetaCommand },
    /// Ask a node hosting `group` what it knows: leader, term, lag (if it leads).
    GroupProbe { group: String },
    /// Ask the meta leader to add `node` to the meta group as a learner.
    JoinMeta { node: NodeId },
    /// Ask the meta leader for a tenant's record (linearizable on the leader).
    TenantLookup { name: String },
    /// Ask a member of `group` for its copy of a chunk that group's catalog references, to
    /// repair a damaged local copy. Answered with [`Reply::Chunk`] (verified by the sender) to
    /// members of the group only.
    FetchChunk { group: String, hash: crate::storage::chunks::Hash },
    /// From the meta leader during a promotion: stop (seal) this replica of `group` if it still
    /// runs, and say where its durable log ends. Answered with [`Reply::Sealed`].
    Seal { group: String },
    /// The segments (name and blake3) of the tenant group `group`, read on its leader after a
    /// read barrier. Answered with [`Reply::Names`].
    CatalogNames { group: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionLagWire {
    pub region: String,
    pub writes: u64,
    pub bytes: u64,
    pub seconds: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupProbeReply {
    pub leader: Option<NodeId>,
    pub term: u64,
    pub is_leader: bool,
    pub last_index: u64,
    pub applied_index: u64,
    pub lag: Vec<RegionLagWire>,
    pub segments: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Append(AppendResponse),
    Vote(VoteResponse),
    Snapshot(SnapshotResponse),
    TransferLeader(TransferLeaderResponse),
    Meta(MetaReply),
    Probe(GroupProbeReply),
    Joined,
    Tenant(Option<crate::meta::state::TenantRecord>),
    Error(WireError),
    /// A chunk's bytes, whose blake3 the sender checked against the hash asked for.
    Chunk(#[serde(with = "crate::storage::byte_buf")] Vec<u8>),
    /// This replica is sealed; its durable log ends at `mark` (None: it holds nothing).
    Sealed {
        mark: Option<crate::meta::state::AckMark>,
        /// The epoch `mark` is from: the one asked about, or the newest earlier one this node
        /// holds when it never started the one asked about.
        epoch: u64,
    },
    Names(Vec<(String, crate::storage::chunks::Hash)>),
    /// A meta proposal's reply with the log index it committed at.
    MetaAt {
        reply: MetaReply,
        index: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WireError {
    #[error("node does not host group {0}")]
    UnknownGroup(String),
    #[error("not the leader; leader is {0:?}")]
    NotLeader(Option<NodeId>),
    #[error("refused: {0}")]
    Refused(String),
    #[error("the receiving node failed: {0}")]
    Failed(String),
    #[error("malformed message: {0}")]
    Malformed(String),
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("wire messages always encode")
}

pub fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, WireError> {
    postcard::from_bytes(b).map_err(|e| WireError::Malformed(e.to_string()))
}
