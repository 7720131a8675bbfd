//! The JSON that `tetradctl` prints, as documented in ops/README.md ("JSON"). Fields may be added
//! there, so unknown fields are ignored here; a renamed or removed field fails to parse.

use serde::Deserialize;

/// `tetradctl status --json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Status {
    pub nodes: Vec<NodeStatus>,
    pub meta_leader: Option<String>,
    pub tenants: Vec<TenantStatus>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NodeStatus {
    pub id: String,
    pub region: String,
    pub up: bool,
    pub api_addr: String,
    pub last_heartbeat_ago_ms: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TenantStatus {
    pub name: String,
    pub mode: String,
    pub state: String,
    pub epoch: u64,
    /// Empty while no leader is known.
    pub leader: String,
    pub term: u64,
    pub primary: String,
    pub voters: Vec<String>,
    pub segments: u64,
    pub lag: Vec<RegionLag>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RegionLag {
    pub region: String,
    pub writes: u64,
    pub bytes: u64,
    pub seconds: f64,
}

/// `tetradctl tenant show --json` / `tenant create --json`.
#[derive(Debug, Clone, Deserialize)]
pub struct TenantInfo {
    pub name: String,
    pub mode: String,
    pub primary: String,
    pub epoch: u64,
    pub voters: Vec<String>,
    pub learners: Vec<String>,
    pub state: String,
    pub leader: String,
    pub term: u64,
}

/// `tetradctl wal list --json`.
#[derive(Debug, Clone, Deserialize)]
pub struct SegmentList {
    pub segments: Vec<ListedSegment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ListedSegment {
    pub name: String,
    pub size: u64,
    pub blake3: String,
    pub proposed_at_ms: u64,
}

impl Status {
    pub fn node(&self, name: &str) -> Option<&NodeStatus> {
        self.nodes.iter().find(|n| n.id == name)
    }

    pub fn tenant(&self, name: &str) -> Option<&TenantStatus> {
        self.tenants.iter().find(|t| t.name == name)
    }

    /// The region a node is in, from the node list.
    pub fn region_of(&self, node: &str) -> Option<&str> {
        self.node(node).map(|n| n.region.as_str())
    }

    pub fn down_nodes(&self) -> Vec<&str> {
        self.nodes.iter().filter(|n| !n.up).map(|n| n.id.as_str()).collect()
    }
}

impl TenantStatus {
    pub fn lag_of(&self, region: &str) -> Option<&RegionLag> {
        self.lag.iter().find(|l| l.region == region)
    }

    /// `region: writes` for every region, for messages.
    pub fn lag_summary(&self) -> String {
        self.lag.iter().map(|l| format!("{}: {} writes", l.region, l.writes)).collect::<Vec<_>>().join(", ")
    }
}
