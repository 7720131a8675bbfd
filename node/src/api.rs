//! The node's client edge: the gRPC service (`grpc.rs`), who may call what on it (`auth.rs`), the error type every client-facing
//! operation returns (`error.rs`) and the one status view (`status.rs`). Nothing behind this
//! edge knows tonic or the wire types of `tetrad-proto`.

mod audit;
pub mod auth;
pub mod error;
mod grpc;
pub mod status;

pub use grpc::{Api, MAX_GRPC_MESSAGE_BYTES};
