//! What happened to a tenant (failovers, switchovers, mode changes, degradation), with the loss
//! record of a failover, and the divergent tails its old replicas report.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// What happened to a tenant: failovers, switchovers, mode changes, degradation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Failover,
    ManualFailover,
    Switchover,
    ModeChange,
    Degraded,
    Healthy,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Failover => "failover",
            EventKind::ManualFailover => "manual-failover",
            EventKind::Switchover => "switchover",
            EventKind::ModeChange => "mode-change",
            EventKind::Degraded => "degraded",
            EventKind::Healthy => "healthy",
        }
    }
}

/// One old-epoch write that a returning replica holds durably and the new epoch lacks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TailWrite {
    pub name: String,
    pub term: u64,
    pub index: u64,
    pub proposed_at_ms: u64,
}

/// A recorded event. Times are wall-clock ms (the proposer's clock).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantEvent {
    pub kind: EventKind,
    pub at_ms: u64,
    pub from_epoch: u64,
    pub to_epoch: u64,
    /// When the failure happened at the latest: the old leader's last liveness renewal.
    pub failed_at_ms: Option<u64>,
    /// From the failure (the old leader's last liveness renewal) to the first ack of the new epoch.
    pub rto_ms: Option<u64>,
    pub lost_writes_min: Option<u64>,
    /// Filled in once a majority of the old epoch's voters rejoined with intact storage.
    pub lost_writes_max: Option<u64>,
    pub loss_window_start_ms: Option<u64>,
    pub loss_window_end_ms: Option<u64>,
    /// The old epoch's voters (a majority of them must report their tails for `lost_writes_max`).
    pub old_voters: Vec<NodeId>,
    /// Divergent tails the old epoch's replicas reported when they came back, kept aside on them.
    pub tails: BTreeMap<NodeId, Vec<TailWrite>>,
    pub detail: String,
}

impl TenantEvent {
    pub fn new(kind: EventKind, at_ms: u64, from_epoch: u64, to_epoch: u64, detail: String) -> Self {
        TenantEvent {
            kind,
            at_ms,
            from_epoch,
            to_epoch,
            failed_at_ms: None,
            rto_ms: None,
            lost_writes_min: None,
            lost_writes_max: None,
            loss_window_start_ms: None,
            loss_window_end_ms: None,
            old_voters: vec![],
            tails: BTreeMap::new(),
            detail,
        }
    }
}
