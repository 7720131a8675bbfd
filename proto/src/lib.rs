//! tetrad-proto: the client and operator API's wire types (prost) and service stubs (tonic).
//! Nothing else lives here.

#![allow(clippy::all)]

pub mod v1 {
    tonic::include_proto!("tetrad.v1");
}

/// Metadata key naming the kind of error a node returned (see proto/tetrad.proto).
pub const ERROR_KIND_KEY: &str = "tetrad-error";
/// Metadata key carrying the api address of the node believed to lead.
pub const LEADER_API_KEY: &str = "tetrad-leader-api";
