//! The meta group's replicated state and its commands: a pure state machine over values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::seams::net::NodeId;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Mode {
    Sync,
    NearSync,
    Async,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::NearSync => "near-sync",
            Mode::Async => "async",
        }
    }
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "sync" => Some(Mode::Sync),
            "near-sync" => Some(Mode::NearSync),
            "async" => Some(Mode::Async),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSpec {
    pub name: String,
    pub mode: Mode,
    /// Primary region.
    pub primary: String,
    pub rpo_target_ms: u64,
    /// `block` or `degrade` (near-sync only).
    pub on_lag: String,
    /// Regions the tenant's replicas may live in (data residency); empty means all.
    pub regions: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TenantState {
    Healthy,
    Degraded,
    CatchingUp,
}

impl TenantState {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantState::Healthy => "healthy",
            TenantState::Degraded => "degraded",
            TenantState::CatchingUp => "catching-up",
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
    pub state: TenantState,
}

impl TenantRecord {
    pub fn group(&self) -> String {
        tenant_group(&self.spec.name, self.epoch)
    }
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }
}

pub fn tenant_group(name: &str, epoch: u64) -> String {
    format!("t/{name}/{epoch}")
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// A node renews its liveness (and registers its incarnation on the first one).
    Heartbeat { node: NodeId, incarnation: u64, proposed_at_ms: u64 },
    /// Creates a tenant with a placement chosen by the proposer.
    CreateTenant { record: TenantRecord },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaReply {
    HeartbeatAccepted,
    HeartbeatRefused {
        reason: String,
    },
    TenantCreated(TenantRecord),
    /// The same tenant already exists with the same spec: an idempotent retry.
    TenantExists(TenantRecord),
    Refused {
        reason: String,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    pub tenants: BTreeMap<String, TenantRecord>,
}

impl MetaState {
    pub fn apply(&mut self, cmd: &MetaCommand) -> MetaReply {
        match cmd {
            MetaCommand::Heartbeat { node, incarnation, proposed_at_ms } => {
                let rec = self.nodes.entry(*node).or_insert(NodeRecord {
                    id: *node,
                    incarnation: *incarnation,
                    last_heartbeat_ms: 0,
                    heartbeats: 0,
                });
                if rec.incarnation != *incarnation {
                    return MetaReply::HeartbeatRefused {
                        reason: format!(
                            "node {node} is registered with storage incarnation {:016x} but heartbeats with {incarnation:016x}: its disk was wiped or replaced; it must rejoin as a new member",
                            rec.incarnation
                        ),
                    };
                }
                rec.last_heartbeat_ms = rec.last_heartbeat_ms.max(*proposed_at_ms);
                rec.heartbeats += 1;
                MetaReply::HeartbeatAccepted
            }
            MetaCommand::CreateTenant { record } => {
                if let Some(existing) = self.tenants.get(&record.spec.name) {
                    if existing.spec == record.spec {
                        return MetaReply::TenantExists(existing.clone());
                    }
                    return MetaReply::Refused {
                        reason: format!("tenant {} already exists with a different specification", record.spec.name),
                    };
                }
                self.tenants.insert(record.spec.name.clone(), record.clone());
                MetaReply::TenantCreated(record.clone())
            }
        }
    }

    /// Number of tenant replicas each node hosts (for placement).
    pub fn load(&self) -> BTreeMap<NodeId, usize> {
        let mut m = BTreeMap::new();
        for t in self.tenants.values() {
            for n in t.members() {
                *m.entry(n).or_insert(0) += 1;
            }
        }
        m
    }

    pub fn primaries_per_region(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for t in self.tenants.values() {
            *m.entry(t.spec.primary.clone()).or_insert(0) += 1;
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_from_a_new_incarnation_is_refused_and_changes_nothing() {
        let mut s = MetaState::default();
        assert_eq!(
            s.apply(&MetaCommand::Heartbeat { node: 7, incarnation: 1, proposed_at_ms: 10 }),
            MetaReply::HeartbeatAccepted
        );
        let before = s.clone();
        let r = s.apply(&MetaCommand::Heartbeat { node: 7, incarnation: 2, proposed_at_ms: 20 });
        assert!(matches!(r, MetaReply::HeartbeatRefused { .. }), "{r:?}");
        assert_eq!(s, before);
    }

    #[test]
    fn create_tenant_is_idempotent_and_refuses_a_different_spec() {
        let spec = TenantSpec {
            name: "acme".into(),
            mode: Mode::Sync,
            primary: "eu-west".into(),
            rpo_target_ms: 0,
            on_lag: "block".into(),
            regions: vec![],
        };
        let rec = TenantRecord {
            spec: spec.clone(),
            epoch: 1,
            voters: vec![1, 2, 3],
            learners: vec![],
            created_at_ms: 5,
            state: TenantState::Healthy,
        };
        let mut s = MetaState::default();
        assert_eq!(s.apply(&MetaCommand::CreateTenant { record: rec.clone() }), MetaReply::TenantCreated(rec.clone()));
        let mut again = rec.clone();
        again.created_at_ms = 99;
        assert_eq!(s.apply(&MetaCommand::CreateTenant { record: again }), MetaReply::TenantExists(rec.clone()));
        let mut other = rec.clone();
        other.spec.primary = "us-east".into();
        assert!(matches!(s.apply(&MetaCommand::CreateTenant { record: other }), MetaReply::Refused { .. }));
        assert_eq!(s.tenants["acme"], rec);
    }
}

mod group_state {
    //! The meta directory as a Raft group's state: persisted as one blob per apply.
    use std::sync::Arc;

    use super::MetaState;
    use crate::raft::state_machine::{ApplyInfo, GroupState};
    use crate::raft::{Command, Reply};
    use crate::storage::store::{Store, StoreError, TxnFn};

    fn decode(b: &[u8]) -> Result<MetaState, StoreError> {
        postcard::from_bytes(b).map_err(|e| StoreError::Corrupt { what: "meta state".into(), detail: e.to_string() })
    }

    impl GroupState for MetaState {
        fn incarnations(&self) -> Vec<(super::NodeId, u64)> {
            self.nodes.iter().map(|(id, r)| (*id, r.incarnation)).collect()
        }

        fn load(store: &Arc<Store>, group: &str) -> Result<Self, StoreError> {
            match store.kv_get(group, "state")? {
                Some(b) => decode(&b),
                None => Ok(MetaState::default()),
            }
        }

        fn apply(
            &mut self,
            _store: &Arc<Store>,
            group: &str,
            _at: ApplyInfo,
            cmd: &Command,
            work: &mut Vec<TxnFn>,
        ) -> Result<Reply, StoreError> {
            let Command::Meta(c) = cmd else {
                return Ok(Reply::None);
            };
            let reply = MetaState::apply(self, c);
            work.push(Store::kv_put(group, "state", postcard::to_stdvec(self).expect("meta state encodes")));
            Ok(Reply::Meta(reply))
        }

        fn snapshot_bytes(&self, _store: &Arc<Store>) -> Result<Vec<u8>, StoreError> {
            Ok(postcard::to_stdvec(self).expect("meta state encodes"))
        }

        fn install(
            &mut self,
            _store: &Arc<Store>,
            group: &str,
            bytes: &[u8],
            work: &mut Vec<TxnFn>,
        ) -> Result<(), StoreError> {
            *self = decode(bytes)?;
            work.push(Store::kv_put(group, "state", bytes.to_vec()));
            Ok(())
        }
    }
}
