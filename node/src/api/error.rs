//! The error every client-facing operation of a node returns, in tetrad's terms; the gRPC edge
//! (`grpc.rs`) maps each kind to a status and the `tetrad-error` metadata that tetradctl's exit
//! codes rest on (proto/tetrad.proto).

use crate::raft::group::WriteError;
use crate::seams::net::NodeId;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ApiError {
    #[error("tenant {0:?} does not exist")]
    UnknownTenant(String),
    #[error("segment {0:?} does not exist")]
    UnknownSegment(String),
    #[error("record {0:?} does not exist")]
    UnknownRecord(String),
    #[error("segment {name:?} already exists with different bytes (stored blake3 {existing}, {existing_size} bytes); nothing was changed")]
    Conflict { name: String, existing: String, existing_size: u64 },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("this node does not lead the tenant's group")]
    NotLeader { leader: Option<NodeId> },
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("outcome unknown: {0}; retrying the same write is safe")]
    OutcomeUnknown(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::NotLeader(l) => ApiError::NotLeader { leader: l },
            WriteError::OutcomeUnknown(m) => ApiError::OutcomeUnknown(m),
            WriteError::Unavailable(m) => ApiError::Unavailable(m),
        }
    }
}
