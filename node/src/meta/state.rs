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

/// A position in a tenant's log with the writes counted up to it. Positions compare by
/// (term, index), never by bare index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckMark {
    pub term: u64,
    pub index: u64,
    /// Writes (segment puts) in the tenant's history up to and including this entry.
    pub writes: u64,
    /// The leader's wall clock when it proposed the entry (ms).
    pub proposed_at_ms: u64,
}

impl AckMark {
    pub fn position(&self) -> (u64, u64) {
        (self.term, self.index)
    }
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
    /// Replaces a tenant's record if its version is still `expect_version` (compare-and-set),
    /// recording `event` with it atomically.
    UpdateTenant { expect_version: u64, record: TenantRecord, event: Option<TenantEvent> },
    /// The epoch's leader reports the newest write it acked (sent with its liveness renewals).
    ReportAcked { tenant: String, epoch: u64, mark: AckMark },
    /// The new epoch's leader acked its first write (closes the failover's RTO).
    FirstAck { tenant: String, epoch: u64, at_ms: u64 },
    /// A replica of `epoch` came back after the tenant moved on and lists its divergent tail.
    ReportTail { tenant: String, epoch: u64, node: NodeId, tail: Vec<TailWrite> },
    /// Reports gathered by the meta leader into one entry (liveness renewals, ack marks; see
    /// `node/src/node/report_batch.rs`), applied in order; the reply lists one answer each.
    /// Only report commands belong in a batch (`MetaCommand::is_report`): a batch never nests.
    Batch(Vec<MetaCommand>),
}

impl MetaCommand {
    /// Periodic reports that commute with each other and can wait a moment for company: the
    /// meta leader batches them into one entry.
    pub fn is_report(&self) -> bool {
        matches!(self, MetaCommand::Heartbeat { .. } | MetaCommand::ReportAcked { .. } | MetaCommand::FirstAck { .. })
    }
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
    TenantUpdated(TenantRecord),
    Noted,
    /// One answer per command of a `MetaCommand::Batch`, in its order.
    Batch(Vec<MetaReply>),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    pub tenants: BTreeMap<String, TenantRecord>,
    /// Every failover, switchover, mode change and state change, per tenant, oldest first.
    pub history: BTreeMap<String, Vec<TenantEvent>>,
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
            MetaCommand::UpdateTenant { expect_version, record, event } => {
                let name = &record.spec.name;
                let Some(current) = self.tenants.get_mut(name) else {
                    return MetaReply::Refused { reason: format!("tenant {name} does not exist") };
                };
                if current.version != *expect_version {
                    return MetaReply::Refused {
                        reason: format!(
                            "tenant {name} changed meanwhile (version {} not {expect_version}); retry",
                            current.version
                        ),
                    };
                }
                if record.epoch < current.epoch {
                    return MetaReply::Refused {
                        reason: format!("tenant {name} is at epoch {}, not {}", current.epoch, record.epoch),
                    };
                }
                let mut next = record.clone();
                next.version = current.version + 1;
                if next.epoch != current.epoch {
                    next.acked = None;
                }
                *current = next.clone();
                if let Some(e) = event {
                    self.history.entry(name.clone()).or_default().push(e.clone());
                }
                MetaReply::TenantUpdated(next)
            }
            MetaCommand::ReportAcked { tenant, epoch, mark } => {
                if let Some(t) = self.tenants.get_mut(tenant) {
                    // A sealed epoch's reports still count: they were acked before the seal was
                    // seen, and loss accounting needs them.
                    if t.epoch == *epoch && t.acked.is_none_or(|a| a.position() < mark.position()) {
                        t.acked = Some(*mark);
                    }
                }
                MetaReply::Noted
            }
            MetaCommand::FirstAck { tenant, epoch, at_ms } => {
                if let Some(ev) = self.history.get_mut(tenant).and_then(|h| {
                    h.iter_mut().rev().find(|e| e.to_epoch == *epoch && e.from_epoch != *epoch && e.rto_ms.is_none())
                }) {
                    let failed_at = ev.failed_at_ms.unwrap_or(ev.at_ms);
                    ev.rto_ms = Some(at_ms.saturating_sub(failed_at));
                }
                MetaReply::Noted
            }
            MetaCommand::ReportTail { tenant, epoch, node, tail } => {
                let Some(ev) = self
                    .history
                    .get_mut(tenant)
                    .and_then(|h| h.iter_mut().rev().find(|e| e.from_epoch == *epoch && e.to_epoch > *epoch))
                else {
                    return MetaReply::Noted;
                };
                ev.tails.insert(*node, tail.clone());
                let reported = ev.old_voters.iter().filter(|v| ev.tails.contains_key(v)).count();
                if !ev.old_voters.is_empty() && reported > ev.old_voters.len() / 2 {
                    let mut lost: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
                    for t in ev.tails.values() {
                        lost.extend(t.iter().map(|w| w.name.as_str()));
                    }
                    // Not clamped to the minimum: a maximum below it would be a bug to see.
                    ev.lost_writes_max = Some(lost.len() as u64);
                }
                MetaReply::Noted
            }
            MetaCommand::Batch(cmds) => MetaReply::Batch(
                cmds.iter()
                    .map(|c| match c {
                        c if c.is_report() => self.apply(c),
                        _ => MetaReply::Refused { reason: "only reports may be batched".into() },
                    })
                    .collect(),
            ),
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

    /// A sync tenant "acme" at epoch 1 on voters 1, 2, 3.
    fn acme_record() -> TenantRecord {
        TenantRecord {
            spec: TenantSpec {
                name: "acme".into(),
                mode: Mode::Sync,
                primary: "eu-west".into(),
                rpo_target_ms: 0,
                on_lag: "block".into(),
                regions: vec![],
            },
            epoch: 1,
            voters: vec![1, 2, 3],
            learners: vec![],
            created_at_ms: 5,
            state: TenantState::Healthy,
            founder: 1,
            version: 0,
            base: None,
            sealed: false,
            failover_to: None,
            acked: None,
        }
    }

    #[test]
    fn a_batch_applies_each_report_in_order_and_refuses_anything_else() {
        let mut s = MetaState::default();
        let create = MetaCommand::CreateTenant { record: acme_record() };
        let r = s.apply(&MetaCommand::Batch(vec![
            MetaCommand::Heartbeat { node: 7, incarnation: 1, proposed_at_ms: 10 },
            MetaCommand::Heartbeat { node: 8, incarnation: 5, proposed_at_ms: 11 },
            create,
            MetaCommand::Heartbeat { node: 7, incarnation: 2, proposed_at_ms: 12 },
            MetaCommand::Heartbeat { node: 7, incarnation: 1, proposed_at_ms: 13 },
        ]));
        let MetaReply::Batch(replies) = r else { panic!("not a batch reply: {r:?}") };
        assert_eq!(replies.len(), 5);
        assert_eq!(replies[0], MetaReply::HeartbeatAccepted);
        assert_eq!(replies[1], MetaReply::HeartbeatAccepted);
        assert!(
            matches!(&replies[2], MetaReply::Refused { reason } if reason.contains("only reports")),
            "{:?}",
            replies[2]
        );
        assert!(matches!(replies[3], MetaReply::HeartbeatRefused { .. }), "{:?}", replies[3]);
        assert_eq!(replies[4], MetaReply::HeartbeatAccepted);
        assert!(s.tenants.is_empty(), "a batched non-report command changed the state");
        assert_eq!(s.nodes[&7].last_heartbeat_ms, 13);
        assert_eq!(s.nodes[&7].heartbeats, 2);
        assert_eq!(s.nodes[&8].incarnation, 5);
    }

    #[test]
    fn create_tenant_is_idempotent_and_refuses_a_different_spec() {
        let rec = acme_record();
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
            _group: &str,
            _at: ApplyInfo,
            cmd: &Command,
            _work: &mut Vec<TxnFn>,
        ) -> Result<Reply, StoreError> {
            let Command::Meta(c) = cmd else {
                return Ok(Reply::None);
            };
            Ok(Reply::Meta(MetaState::apply(self, c)))
        }

        // The directory is one value: written once per batch of applies, not once per command.
        fn stage_whole(&self, group: &str, work: &mut Vec<TxnFn>) {
            work.push(Store::kv_put(group, "state", postcard::to_stdvec(self).expect("meta state encodes")));
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
