//! The one status view of a node: what it knows of the cluster (nodes and their liveness, the
//! meta leader, every tenant's record and its group's probe). The gRPC edge turns it into
//! `StatusResponse`; the simulator reads it directly.

use crate::meta::state::TenantRecord;
use crate::raft::wire::GroupProbeReply;
use crate::seams::net::NodeId;

#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub id: NodeId,
    pub name: String,
    pub region: String,
    pub up: bool,
    pub api_addr: std::net::SocketAddr,
    pub last_heartbeat_ago_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TenantView {
    pub record: TenantRecord,
    pub probe: Option<GroupProbeReply>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClusterStatus {
    pub nodes: Vec<NodeView>,
    pub meta_leader: Option<NodeId>,
    pub tenants: Vec<TenantView>,
}
