//! A node as the directory knows it: its storage incarnation and its liveness renewals.

use serde::{Deserialize, Serialize};

use crate::NodeId;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    /// The storage incarnation the node registered with; heartbeats from any other incarnation
    /// of the same node id are refused.
    pub incarnation: u64,
    /// Wall clock of the meta leader when it proposed the node's latest heartbeat (ms). For
    /// display only: validity of a lease is judged on the node's own monotonic clock.
    pub last_heartbeat_ms: u64,
    pub heartbeats: u64,
}
