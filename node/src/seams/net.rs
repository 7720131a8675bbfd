//! The network seam: node-to-node request/response messages.
//!
//! Every Raft RPC of every group, liveness heartbeats and snapshot transfers are encoded to bytes
//! by the caller (see `crate::wire`) and carried by a [`Transport`]. Production carries them over
//! QUIC with mutual TLS (`crate::net::quic`), one connection per peer with one stream per request,
//! so a heartbeat never queues behind a large append; the simulator carries the very same bytes
//! over an in-memory network with latencies, loss and partitions.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

/// Cluster-wide node identifier (see `crate::topology` for the mapping to names like `eu-west-2`).
pub type NodeId = u64;

/// Largest single message either side accepts (snapshots included).
pub const MAX_MESSAGE_BYTES: usize = 1 << 30;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NetError {
    #[error("node {0} is unreachable: {1}")]
    Unreachable(NodeId, String),
    #[error("request to node {0} timed out after {1:?}; its outcome is unknown")]
    Timeout(NodeId, Duration),
    #[error("node {0} closed the stream before answering: {1}")]
    Closed(NodeId, String),
    #[error("message of {0} bytes exceeds the limit of {MAX_MESSAGE_BYTES}")]
    TooLarge(usize),
    #[error("unknown node {0}")]
    UnknownNode(NodeId),
}

/// Sends a request to a peer and waits for its reply.
pub trait Transport: Send + Sync + 'static {
    /// The implementation must enforce `timeout` itself: a call to a dead or partitioned peer
    /// ends with `NetError::Timeout` or `Unreachable`, never hangs.
    fn call(&self, to: NodeId, request: Bytes, timeout: Duration) -> BoxFuture<'static, Result<Bytes, NetError>>;
}

pub type TransportRef = Arc<dyn Transport>;

/// Answers requests arriving from peers. `from` is the authenticated sender.
pub trait RpcHandler: Send + Sync + 'static {
    fn handle(&self, from: NodeId, request: Bytes) -> BoxFuture<'static, Bytes>;
}

pub type RpcHandlerRef = Arc<dyn RpcHandler>;
