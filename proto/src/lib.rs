//! tetrad-proto: the wire formats of tetrad's outside edge: the client and operator API's types
//! (prost) and service stubs (tonic) in [`v1`], and the JSON that `tetradctl` prints in [`json`].
//! Nothing else lives here.

pub mod json;

// Generated code: clippy's opinions about it are prost's business.
#[allow(clippy::all)]
pub mod v1 {
    tonic::include_proto!("tetrad.v1");
}

/// Metadata key naming the kind of error a node returned (see proto/tetrad.proto).
pub const ERROR_KIND_KEY: &str = "tetrad-error";
/// Metadata key carrying the api address of the node believed to lead.
pub const LEADER_API_KEY: &str = "tetrad-leader-api";
