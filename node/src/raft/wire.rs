//! What crosses the node-to-node network: one request and one reply per call, encoded with
//! postcard. Production carries these bytes over QUIC; the simulator carries the same bytes.
//!
//! Every message starts with one version byte ([`WIRE_VERSION`]) and then the postcard bytes of
//! that version's types, so that a later change of format is a new version, not a silent
//! misreading: [`decode`] refuses a version it does not know with
//! [`WireError::UnknownVersion`], never a panic or a garbled value. A node of this version and
//! one of the unversioned format before it cannot talk (their first bytes mean different things);
//! the next format change can be read side by side with this one.

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

// Large only through `MetaCommand` (`MetaPropose`); a request lives from its encoding to its
// dispatch.
#[allow(clippy::large_enum_variant)]
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
    /// From the node driving `tetradctl verify`: check (and repair from the group's other
    /// members) the chunks of about `max_bytes` of the segments this replica's applied catalog
    /// of `group` holds after segment `after` (from the first when `None`). Answered with
    /// [`Reply::Verified`].
    VerifyChunks { group: String, after: Option<String>, max_bytes: u64 },
    /// From the leader of `group` during a push by reference, before it proposes the entry
    /// naming them: store these chunk bytes durably (each checked against its hash), so the
    /// entry's append here finds them. Answered with [`Reply::Stored`] to members of the group
    /// only.
    StoreChunk {
        group: String,
        hash: crate::storage::chunks::Hash,
        #[serde(with = "crate::storage::byte_buf")]
        data: Vec<u8>,
    },
}

/// What one verification batch on one replica found. `missing + damaged = repaired +
/// unrepaired`: every chunk found missing or damaged was either rewritten from a healthy copy
/// or is still bad.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyCounts {
    /// Chunks looked at.
    pub checked: u64,
    /// Bytes of the chunks found intact (the progress a client shows).
    pub bytes: u64,
    /// Chunks whose file was absent.
    pub missing: u64,
    /// Chunks whose bytes did not match their blake3, or could not be read.
    pub damaged: u64,
    /// Missing or damaged chunks rewritten from another member's verified copy.
    pub repaired: u64,
    /// Missing or damaged chunks that no member could supply a healthy copy of.
    pub unrepaired: u64,
}

impl VerifyCounts {
    pub fn add(&mut self, o: &VerifyCounts) {
        self.checked += o.checked;
        self.bytes += o.bytes;
        self.missing += o.missing;
        self.damaged += o.damaged;
        self.repaired += o.repaired;
        self.unrepaired += o.unrepaired;
    }
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
    /// The answer to [`Request::VerifyChunks`]: what the batch found, and the last segment it
    /// covered (the `after` of the next batch; `None`: this replica's catalog is done).
    Verified {
        counts: VerifyCounts,
        next: Option<String>,
    },
    /// The answer to [`Request::StoreChunk`]: the chunk is durable here.
    Stored,
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
    #[error("message in wire version {found}, but this node speaks version {supported}: are the nodes running different tetrad releases?")]
    UnknownVersion { found: u8, supported: u8 },
}

/// The encoding version of every peer message: its first byte.
pub const WIRE_VERSION: u8 = 1;

/// The message's bytes: [`WIRE_VERSION`], then its postcard encoding.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_extend(v, vec![WIRE_VERSION]).expect("wire messages always encode")
}

/// Decodes a message of [`WIRE_VERSION`]; any other version, an empty message or bytes that do
/// not decode are an error value.
pub fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, WireError> {
    match b.split_first() {
        None => Err(WireError::Malformed("empty message: no version byte".into())),
        Some((&WIRE_VERSION, body)) => postcard::from_bytes(body).map_err(|e| WireError::Malformed(e.to_string())),
        Some((&found, _)) => Err(WireError::UnknownVersion { found, supported: WIRE_VERSION }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(group: &str) -> Envelope {
        Envelope { from_incarnation: 7, body: Request::GroupProbe { group: group.into() } }
    }

    #[test]
    fn a_message_starts_with_its_version_and_round_trips() {
        let bytes = encode(&probe("t/a/1"));
        assert_eq!(bytes[0], WIRE_VERSION);
        assert_eq!(&bytes[1..], postcard::to_stdvec(&probe("t/a/1")).unwrap().as_slice());
        let back: Envelope = decode(&bytes).unwrap();
        assert_eq!(back.from_incarnation, 7);
        assert!(matches!(back.body, Request::GroupProbe { group } if group == "t/a/1"));
    }

    #[test]
    fn an_unknown_version_is_refused_with_an_error_naming_it() {
        let mut bytes = encode(&probe("t/a/1"));
        for found in [0u8, 2, 0xff] {
            bytes[0] = found;
            let err = decode::<Envelope>(&bytes).unwrap_err();
            assert_eq!(err, WireError::UnknownVersion { found, supported: WIRE_VERSION });
            assert!(err.to_string().contains(&format!("version {found}")), "{err}");
        }
    }

    #[test]
    fn empty_and_truncated_messages_are_malformed_not_a_panic() {
        assert!(matches!(decode::<Envelope>(&[]), Err(WireError::Malformed(_))));
        let bytes = encode(&ReplyEnvelope { from_incarnation: 9, body: Reply::Chunk(vec![5; 100]) });
        for cut in 1..bytes.len() {
            assert!(matches!(decode::<ReplyEnvelope>(&bytes[..cut]), Err(WireError::Malformed(_))), "cut at {cut}");
        }
        assert!(decode::<ReplyEnvelope>(&bytes).is_ok());
    }
}
