//! Refusals waiting on one node to be written to the meta group's audit log, coalesced so that
//! refused requests cannot turn into a flood of meta-group writes.
//!
//! A refusal costs the refused caller nothing but a TLS connection, so a node must not propose a
//! meta entry per refusal: every node replicates the meta log, and a client that loops on a
//! refused call would make the whole cluster write. Instead the node buffers refusals here and
//! flushes the buffer as one `MetaCommand::Audit` at most once per flush interval
//! (`node/src/api/audit.rs`). Identical refusals (same subject, role, peer address, action, tenant
//! and reason) within one interval become one entry with a count and the times of the first and
//! the last; at most [`AUDIT_PENDING_KEYS_MAX`] distinct ones are itemised per interval, and any
//! beyond that are counted in one "suppressed" entry. So a node adds at most one audit command of
//! at most `AUDIT_PENDING_KEYS_MAX + 1` entries per interval, whatever the refusal rate, and no
//! refusal goes uncounted.

use std::collections::BTreeMap;

use crate::directory::{AuditEntry, AuditOutcome};

/// Distinct refusals itemised per flush interval on one node.
pub const AUDIT_PENDING_KEYS_MAX: usize = 256;

/// The subject and action of the entry that counts suppressed refusals.
pub const SUPPRESSED: &str = "*suppressed*";

type Key = (String, String, String, String, Option<String>, String);

fn key(e: &AuditEntry) -> Key {
    (e.subject.clone(), e.role.clone(), e.peer.clone(), e.action.clone(), e.tenant.clone(), e.outcome.text().to_owned())
}

#[derive(Debug, Default)]
pub struct AuditBuffer {
    pending: BTreeMap<Key, AuditEntry>,
    /// Refusals beyond the itemised ones: count, first and last time.
    suppressed: Option<(u64, u64, u64)>,
}

impl AuditBuffer {
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.suppressed.is_none()
    }

    /// Adds one refusal: merged into an identical pending one, itemised if there is room, or
    /// counted as suppressed.
    pub fn add(&mut self, e: AuditEntry) {
        debug_assert!(matches!(e.outcome, AuditOutcome::Refused { .. }), "only refusals are coalesced");
        let k = key(&e);
        if let Some(p) = self.pending.get_mut(&k) {
            p.count += e.count;
            p.last_at_ms = p.last_at_ms.max(e.last_at_ms);
            p.at_ms = p.at_ms.min(e.at_ms);
        } else if self.pending.len() < AUDIT_PENDING_KEYS_MAX {
            self.pending.insert(k, e);
        } else {
            let s = self.suppressed.get_or_insert((0, e.at_ms, e.last_at_ms));
            s.0 += e.count;
            s.1 = s.1.min(e.at_ms);
            s.2 = s.2.max(e.last_at_ms);
        }
    }

    /// Everything pending, oldest first, with the suppressed count last; the buffer is empty after.
    pub fn take(&mut self, node: crate::NodeId) -> Vec<AuditEntry> {
        let mut out: Vec<AuditEntry> = std::mem::take(&mut self.pending).into_values().collect();
        out.sort_by_key(|e| e.at_ms);
        if let Some((count, at_ms, last_at_ms)) = self.suppressed.take() {
            out.push(AuditEntry {
                at_ms,
                last_at_ms,
                node,
                subject: SUPPRESSED.into(),
                role: String::new(),
                peer: String::new(),
                action: SUPPRESSED.into(),
                tenant: None,
                outcome: AuditOutcome::Refused {
                    reason: format!(
                        "{count} refusals not itemised: more than {AUDIT_PENDING_KEYS_MAX} distinct refusals on this node in one flush interval"
                    ),
                },
                count,
            });
        }
        assert!(out.len() <= AUDIT_PENDING_KEYS_MAX + 1);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(subject: &str, at_ms: u64) -> AuditEntry {
        AuditEntry {
            at_ms,
            last_at_ms: at_ms,
            node: 1,
            subject: subject.into(),
            role: "tenant:a".into(),
            peer: "10.0.0.1".into(),
            action: "PushWal".into(),
            tenant: Some("b".into()),
            outcome: AuditOutcome::Refused { reason: "permission denied".into() },
            count: 1,
        }
    }

    #[test]
    fn identical_refusals_coalesce_with_a_count_and_their_first_and_last_time() {
        let mut b = AuditBuffer::default();
        for t in [30, 10, 20] {
            b.add(refusal("app", t));
        }
        b.add(refusal("other", 15));
        let out = b.take(7);
        assert_eq!(
            out.iter().map(|e| (e.subject.as_str(), e.count, e.at_ms, e.last_at_ms)).collect::<Vec<_>>(),
            [("app", 3, 10, 30), ("other", 1, 15, 15)]
        );
        assert!(b.is_empty());
        assert!(b.take(7).is_empty());
    }

    #[test]
    fn distinct_refusals_beyond_the_cap_are_counted_not_itemised() {
        let mut b = AuditBuffer::default();
        let extra = 1_000u64;
        for i in 0..AUDIT_PENDING_KEYS_MAX as u64 + extra {
            b.add(refusal(&format!("s{i}"), 100 + i));
        }
        // A repeat of an itemised refusal still merges into it.
        b.add(refusal("s0", 5_000));
        let out = b.take(7);
        assert_eq!(out.len(), AUDIT_PENDING_KEYS_MAX + 1);
        let last = out.last().expect("suppressed entry");
        assert_eq!((last.subject.as_str(), last.count, last.node), (SUPPRESSED, extra, 7));
        assert_eq!(
            (last.at_ms, last.last_at_ms),
            (100 + AUDIT_PENDING_KEYS_MAX as u64, 100 + AUDIT_PENDING_KEYS_MAX as u64 + extra - 1)
        );
        assert!(out.iter().all(AuditEntry::within_limits));
        let counted: u64 = out.iter().map(|e| e.count).sum();
        assert_eq!(counted, AUDIT_PENDING_KEYS_MAX as u64 + extra + 1, "every refusal is counted once");
    }
}
