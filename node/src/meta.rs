//! The meta group: the cluster-wide directory of nodes and tenants, node liveness, and (later)
//! the failover controller. Its state is replicated by a Raft group whose voters span at least
//! three regions; every other node follows it as a learner so that each node has the directory.

pub mod liveness;
pub mod state;

/// The meta group's name in the store and on the wire.
pub const META_GROUP: &str = "meta";
