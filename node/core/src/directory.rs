//! The meta group's directory as a pure state machine: what applying each [`MetaCommand`]
//! decides (heartbeats and storage incarnations, tenant creation, compare-and-set record updates,
//! ack reports, first acks, divergent tails, the history of events), and the value types it is
//! made of. The node's raft layer persists it (`node/src/meta/state.rs`); nothing here does.

mod ack_mark;
mod audit;
mod command;
mod mode;
mod node_record;
mod on_lag;
mod tenant_event;
mod tenant_record;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use ack_mark::AckMark;
pub use audit::{
    audit_text, AuditChange, AuditEntry, AuditLog, AuditOutcome, AuditRefused, AUDIT_COMMAND_ENTRIES_MAX,
    AUDIT_RETAINED_MAX, AUDIT_TEXT_BYTES_MAX,
};
pub use command::{MetaCommand, MetaReply};
pub use mode::Mode;
pub use node_record::NodeRecord;
pub use on_lag::{BadOnLag, OnLag};
pub use tenant_event::{EventKind, TailWrite, TenantEvent};
pub use tenant_record::{parse_group, tenant_group, EpochBase, TenantHealth, TenantRecord, TenantSpec};

use crate::NodeId;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    pub tenants: BTreeMap<String, TenantRecord>,
    /// Every failover, switchover, mode change and state change, per tenant, oldest first.
    pub history: BTreeMap<String, Vec<TenantEvent>>,
    /// Admin actions and refused requests (`audit.rs`). Not part of the directory's one-value
    /// encoding, which is rewritten after every batch of applies: the node persists it row by
    /// row and appends it to snapshots (`node/src/meta/state.rs`).
    #[serde(skip)]
    pub audit: AuditLog,
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
                    let mut lost: BTreeSet<&str> = BTreeSet::new();
                    for t in ev.tails.values() {
                        lost.extend(t.iter().map(|w| w.name.as_str()));
                    }
                    // Not clamped to the minimum: a maximum below it would be a bug to see.
                    ev.lost_writes_max = Some(lost.len() as u64);
                }
                MetaReply::Noted
            }
            MetaCommand::Audit { entries } => match self.audit.append(entries) {
                Ok(_) => MetaReply::Noted,
                Err(e) => MetaReply::Refused { reason: e.to_string() },
            },
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

    /// `voters`' newest liveness renewal (wall ms, as the meta leader stamped it; 0 if none is
    /// known) and when the last of their leases ends: that plus `grace` (the period and the drift
    /// bound). The end of a failover's loss window.
    pub fn old_leases(&self, voters: &[NodeId], grace: Duration) -> (u64, u64) {
        let last = voters.iter().filter_map(|v| self.nodes.get(v)).map(|r| r.last_heartbeat_ms).max().unwrap_or(0);
        (last, last + grace.as_millis() as u64)
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
                on_lag: OnLag::Block,
                regions: vec![],
            },
            epoch: 1,
            voters: vec![1, 2, 3],
            learners: vec![],
            created_at_ms: 5,
            state: TenantHealth::Healthy,
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

    #[test]
    fn an_update_is_compare_and_set_and_a_new_epoch_forgets_the_acks() {
        let mut s = MetaState::default();
        let rec = acme_record();
        s.apply(&MetaCommand::CreateTenant { record: rec.clone() });
        let mark = AckMark { term: 2, index: 9, writes: 4, proposed_at_ms: 50 };
        s.apply(&MetaCommand::ReportAcked { tenant: "acme".into(), epoch: 1, mark });
        // An older report never moves the mark back; another epoch's is ignored.
        s.apply(&MetaCommand::ReportAcked { tenant: "acme".into(), epoch: 1, mark: AckMark { index: 5, ..mark } });
        s.apply(&MetaCommand::ReportAcked { tenant: "acme".into(), epoch: 2, mark: AckMark { term: 9, ..mark } });
        assert_eq!(s.tenants["acme"].acked, Some(mark));

        let stale = MetaCommand::UpdateTenant { expect_version: 3, record: rec.clone(), event: None };
        assert_eq!(
            s.apply(&stale),
            MetaReply::Refused { reason: "tenant acme changed meanwhile (version 0 not 3); retry".into() }
        );
        let mut next = rec.clone();
        next.epoch = 2;
        let ev = TenantEvent::new(EventKind::Failover, 60, 1, 2, "x".into());
        let r =
            s.apply(&MetaCommand::UpdateTenant { expect_version: 0, record: next.clone(), event: Some(ev.clone()) });
        let expected = TenantRecord { version: 1, acked: None, ..next };
        assert_eq!(r, MetaReply::TenantUpdated(expected.clone()));
        assert_eq!(s.tenants["acme"], expected);
        assert_eq!(s.history["acme"], vec![ev]);
        let back = MetaCommand::UpdateTenant { expect_version: 1, record: rec, event: None };
        assert_eq!(s.apply(&back), MetaReply::Refused { reason: "tenant acme is at epoch 2, not 1".into() });
    }

    #[test]
    fn first_ack_closes_the_rto_and_a_majority_of_tails_gives_the_maximum() {
        let mut s = MetaState::default();
        let mut ev = TenantEvent::new(EventKind::Failover, 100, 1, 2, String::new());
        ev.failed_at_ms = Some(90);
        ev.old_voters = vec![1, 2, 3];
        s.history.insert("acme".into(), vec![ev]);
        s.apply(&MetaCommand::FirstAck { tenant: "acme".into(), epoch: 2, at_ms: 340 });
        s.apply(&MetaCommand::FirstAck { tenant: "acme".into(), epoch: 2, at_ms: 999 });
        assert_eq!(s.history["acme"][0].rto_ms, Some(250), "only the first ack counts");

        let w = |name: &str| TailWrite { name: name.into(), term: 1, index: 1, proposed_at_ms: 0 };
        let tail = |node, names: &[&str]| MetaCommand::ReportTail {
            tenant: "acme".into(),
            epoch: 1,
            node,
            tail: names.iter().map(|n| w(n)).collect(),
        };
        s.apply(&tail(1, &["a", "b"]));
        assert_eq!(s.history["acme"][0].lost_writes_max, None, "one of three is no majority");
        s.apply(&tail(9, &["z"]));
        assert_eq!(s.history["acme"][0].lost_writes_max, None, "a non-voter's tail does not count toward it");
        s.apply(&tail(3, &["b", "c"]));
        // The union of every tail reported (the non-voter's too): a, b, c, z.
        assert_eq!(s.history["acme"][0].lost_writes_max, Some(4));
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;
        use super::acme_record;

        /// Commands over two nodes and one tenant, with versions, epochs and positions drawn
        /// from small ranges so that they collide often.
        fn command() -> impl Strategy<Value = MetaCommand> {
            let mark = (0u64..3, 0u64..6, 0u64..9).prop_map(|(term, index, writes)| AckMark {
                term,
                index,
                writes,
                proposed_at_ms: 0,
            });
            prop_oneof![
                (1u64..3, 1u64..3, 0u64..100).prop_map(|(node, incarnation, proposed_at_ms)| MetaCommand::Heartbeat {
                    node,
                    incarnation,
                    proposed_at_ms
                }),
                (0u64..3).prop_map(|p| {
                    let mut record = acme_record();
                    record.spec.rpo_target_ms = p;
                    MetaCommand::CreateTenant { record }
                }),
                (0u64..4, 0u64..4, any::<bool>()).prop_map(|(expect_version, epoch, event)| {
                    let mut record = acme_record();
                    record.epoch = epoch;
                    let event = event.then(|| TenantEvent::new(EventKind::Switchover, 0, epoch, epoch, String::new()));
                    MetaCommand::UpdateTenant { expect_version, record, event }
                }),
                (0u64..4, mark).prop_map(|(epoch, mark)| MetaCommand::ReportAcked {
                    tenant: "acme".into(),
                    epoch,
                    mark
                }),
            ]
        }

        proptest! {
            /// A refusal changes nothing; a node's storage incarnation is fixed by its first
            /// heartbeat; an accepted update bumps the version by one, never
            /// moves the epoch back, and records its event; the reported ack only moves forward
            /// by (term, index) within an epoch.
            #[test]
            fn the_directory_keeps_its_invariants(cmds in proptest::collection::vec(command(), 0..40)) {
                let mut s = MetaState::default();
                for c in &cmds {
                    let before = s.clone();
                    let reply = s.apply(c);
                    match &reply {
                        MetaReply::Refused { .. } | MetaReply::HeartbeatRefused { .. } | MetaReply::TenantExists(_) => {
                            prop_assert_eq!(&s, &before, "{:?} changed the state", c);
                        }
                        MetaReply::TenantUpdated(r) => {
                            let old = &before.tenants["acme"];
                            prop_assert_eq!(r.version, old.version + 1);
                            prop_assert!(r.epoch >= old.epoch);
                            prop_assert_eq!(&s.tenants["acme"], r);
                            let events = |st: &MetaState| st.history.get("acme").map_or(0, Vec::len);
                            let has_event = matches!(c, MetaCommand::UpdateTenant { event: Some(_), .. });
                            prop_assert_eq!(events(&s), events(&before) + has_event as usize);
                        }
                        _ => {}
                    }
                    if let MetaCommand::Heartbeat { node, incarnation, .. } = c {
                        // A registered incarnation never changes; only it may renew.
                        let registered = before.nodes.get(node).map_or(*incarnation, |r| r.incarnation);
                        prop_assert_eq!(s.nodes[node].incarnation, registered);
                        prop_assert_eq!(reply == MetaReply::HeartbeatAccepted, registered == *incarnation);
                    }
                    if let (Some(old), Some(new)) = (before.tenants.get("acme"), s.tenants.get("acme")) {
                        if old.epoch == new.epoch {
                            if let (Some(a), Some(b)) = (old.acked, new.acked) {
                                prop_assert!(b.position() >= a.position());
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn old_leases_end_a_grace_after_the_newest_renewal() {
        let mut s = MetaState::default();
        s.apply(&MetaCommand::Heartbeat { node: 1, incarnation: 1, proposed_at_ms: 1_000 });
        s.apply(&MetaCommand::Heartbeat { node: 2, incarnation: 1, proposed_at_ms: 1_700 });
        s.apply(&MetaCommand::Heartbeat { node: 3, incarnation: 1, proposed_at_ms: 9_000 });
        assert_eq!(s.old_leases(&[1, 2, 4], Duration::from_millis(4_500)), (1_700, 6_200));
        assert_eq!(s.old_leases(&[4], Duration::from_millis(4_500)), (0, 4_500));
    }
}
