//! A tenant as the directory records it: its spec, its current epoch's members and state, and
//! where the epoch started. Records change only by compare-and-set on `version`.

use serde::{Deserialize, Serialize};

use super::{AckMark, Mode, OnLag};
use crate::NodeId;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSpec {
    pub name: String,
    pub mode: Mode,
    /// Primary region.
    pub primary: String,
    pub rpo_target_ms: u64,
    /// What the lag gate does when it closes (near-sync only).
    pub on_lag: OnLag,
    /// Regions the tenant's replicas may live in (data residency); empty means all.
    pub regions: Vec<String>,
}

/// A near-sync tenant's standing against its claim (DESIGN.md, "Lag gate"): `degraded` and
/// `catching-up` both count as degraded. Not to be confused with a tenant group's replicated
/// state (the node's `tenant::group_state::TenantState`); the node still calls this one
/// `meta::state::TenantState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TenantHealth {
    Healthy,
    Degraded,
    CatchingUp,
}

impl TenantHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantHealth::Healthy => "healthy",
            TenantHealth::Degraded => "degraded",
            TenantHealth::CatchingUp => "catching-up",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub spec: TenantSpec,
    /// The epoch's Raft group is `t/<name>/<epoch>`.
    pub epoch: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub created_at_ms: u64,
    pub state: TenantHealth,
    /// The one node that initialises the epoch's group (the first voter at creation, the
    /// promoted replica after a failover); nobody else ever does.
    pub founder: NodeId,
    /// Bumped by every change of the record; updates are compare-and-set on it.
    pub version: u64,
    /// Where this epoch started, when a promotion started it (None for epoch 1 and switchovers
    /// that kept the group).
    pub base: Option<EpochBase>,
    /// The current epoch is sealed: its replicas stop their group and refuse its appends, while
    /// the meta leader promotes a survivor into the next epoch.
    pub sealed: bool,
    /// A manual failover's target region for the sealed epoch (None: automatic, anywhere).
    pub failover_to: Option<String>,
    /// The newest ack the epoch's leader reported with its liveness heartbeats.
    pub acked: Option<AckMark>,
}

/// The durable log a new epoch was started from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochBase {
    pub from_epoch: u64,
    /// The replica whose durable log (including entries past its known commit point) seeds the
    /// new epoch.
    pub node: NodeId,
    pub last: AckMark,
}

impl TenantRecord {
    pub fn group(&self) -> String {
        tenant_group(&self.spec.name, self.epoch)
    }

    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }
}

/// The Raft group of a tenant's epoch: `t/<tenant>/<epoch>`.
pub fn tenant_group(name: &str, epoch: u64) -> String {
    format!("t/{name}/{epoch}")
}

/// `t/<tenant>/<epoch>` -> (tenant, epoch); None for any other group (the meta group).
pub fn parse_group(group: &str) -> Option<(String, u64)> {
    let rest = group.strip_prefix("t/")?;
    let (t, e) = rest.rsplit_once('/')?;
    Some((t.to_string(), e.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_parse() {
        assert_eq!(parse_group("t/acme-1/3"), Some(("acme-1".into(), 3)));
        assert_eq!(parse_group("meta"), None);
        assert_eq!(parse_group(&tenant_group("a/b", 7)), Some(("a/b".into(), 7)));
    }
}
