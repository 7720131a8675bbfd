//! The audit log the meta group keeps: who (the certificate's subject and role) did or was
//! refused what (the RPC), on which tenant, when and with what outcome. Bounded by count: the
//! newest [`AUDIT_RETAINED_MAX`] entries are kept and older ones are dropped, oldest first, with a
//! count of how many were dropped. Entries are numbered by a sequence that never repeats, so a
//! reader can page and a node can persist one row per entry (`node/src/meta/state.rs`).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// Entries the log keeps; the oldest beyond this are dropped. At about 200 bytes an entry, the
/// log costs every node (every node replicates the meta group) about 2 MB of memory and disk.
pub const AUDIT_RETAINED_MAX: usize = 10_000;
/// Entries one `MetaCommand::Audit` may carry.
pub const AUDIT_COMMAND_ENTRIES_MAX: usize = 300;
/// Longest text field of an entry, in bytes (subjects, actions, reasons); proposers truncate.
pub const AUDIT_TEXT_BYTES_MAX: usize = 512;

/// What came of an audited request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditOutcome {
    /// An admin action that succeeded; `detail` says what it did.
    Done { detail: String },
    /// An admin action that was allowed and then failed.
    Failed { reason: String },
    /// A request the authorization refused.
    Refused { reason: String },
}

impl AuditOutcome {
    pub fn kind(&self) -> &'static str {
        match self {
            AuditOutcome::Done { .. } => "done",
            AuditOutcome::Failed { .. } => "failed",
            AuditOutcome::Refused { .. } => "refused",
        }
    }

    pub fn text(&self) -> &str {
        match self {
            AuditOutcome::Done { detail } => detail,
            AuditOutcome::Failed { reason } | AuditOutcome::Refused { reason } => reason,
        }
    }
}

/// One audited request, or `count` identical refusals coalesced between `at_ms` and `last_at_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Wall-clock ms on the serving node of the (first) request.
    pub at_ms: u64,
    /// Wall-clock ms of the last request this entry stands for (`at_ms` when `count` is 1).
    pub last_at_ms: u64,
    /// The node that served the request.
    pub node: NodeId,
    /// The certificate's common name; `<unauthenticated>` when no role could be read.
    pub subject: String,
    /// The certificate's role as text (`admin`, `tenant:T`), empty when unauthenticated.
    pub role: String,
    /// The caller's IP address as the node saw it.
    pub peer: String,
    /// The RPC (`FailoverTenant`, `PushWal`).
    pub action: String,
    pub tenant: Option<String>,
    pub outcome: AuditOutcome,
    /// How many requests this entry stands for (1 unless coalesced).
    pub count: u64,
}

impl AuditEntry {
    fn texts(&self) -> [&str; 5] {
        [&self.subject, &self.role, &self.peer, &self.action, self.outcome.text()]
    }

    /// Whether every field is within the limits [`AuditLog::append`] enforces.
    pub fn within_limits(&self) -> bool {
        self.count >= 1
            && self.last_at_ms >= self.at_ms
            && self.texts().iter().all(|t| t.len() <= AUDIT_TEXT_BYTES_MAX)
            && self.tenant.as_ref().is_none_or(|t| t.len() <= AUDIT_TEXT_BYTES_MAX)
    }
}

/// Cuts `s` to at most [`AUDIT_TEXT_BYTES_MAX`] bytes on a character boundary.
pub fn audit_text(s: &str) -> String {
    if s.len() <= AUDIT_TEXT_BYTES_MAX {
        return s.to_owned();
    }
    let mut end = AUDIT_TEXT_BYTES_MAX - 3;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Why an append was refused (and changed nothing).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuditRefused {
    #[error("an audit command carries at most {AUDIT_COMMAND_ENTRIES_MAX} entries, not {0}")]
    TooMany(usize),
    #[error("audit entry {0} has a field longer than {AUDIT_TEXT_BYTES_MAX} bytes or a count of zero")]
    BadEntry(usize),
}

/// The retained entries, oldest first; `entries[i]` has sequence number `first_seq + i`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLog {
    pub first_seq: u64,
    pub entries: VecDeque<AuditEntry>,
}

/// What an append changed, for persisting it row by row: the sequence numbers added and dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditChange {
    pub added: std::ops::Range<u64>,
    pub dropped: std::ops::Range<u64>,
}

impl AuditLog {
    /// The sequence number the next entry gets.
    pub fn next_seq(&self) -> u64 {
        self.first_seq + self.entries.len() as u64
    }

    /// Entries dropped by retention so far (they had sequence numbers below `first_seq`).
    pub fn dropped(&self) -> u64 {
        self.first_seq
    }

    /// Appends `entries` in order, dropping the oldest beyond [`AUDIT_RETAINED_MAX`]. A command
    /// with too many entries or an entry past the limits is refused whole.
    pub fn append(&mut self, entries: &[AuditEntry]) -> Result<AuditChange, AuditRefused> {
        if entries.len() > AUDIT_COMMAND_ENTRIES_MAX {
            return Err(AuditRefused::TooMany(entries.len()));
        }
        if let Some(i) = entries.iter().position(|e| !e.within_limits()) {
            return Err(AuditRefused::BadEntry(i));
        }
        let start = self.next_seq();
        self.entries.extend(entries.iter().cloned());
        let first_before = self.first_seq;
        while self.entries.len() > AUDIT_RETAINED_MAX {
            self.entries.pop_front();
            self.first_seq += 1;
        }
        assert!(self.entries.len() <= AUDIT_RETAINED_MAX);
        Ok(AuditChange { added: start.max(self.first_seq)..self.next_seq(), dropped: first_before..self.first_seq })
    }

    /// The entry with sequence number `seq`, if retained.
    pub fn get(&self, seq: u64) -> Option<&AuditEntry> {
        seq.checked_sub(self.first_seq).and_then(|i| self.entries.get(usize::try_from(i).ok()?))
    }

    /// Retained entries with their sequence numbers, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (u64, &AuditEntry)> {
        self.entries.iter().enumerate().map(|(i, e)| (self.first_seq + i as u64, e))
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
            peer: "127.0.0.1".into(),
            action: "PushWal".into(),
            tenant: Some("b".into()),
            outcome: AuditOutcome::Refused { reason: "permission denied".into() },
            count: 1,
        }
    }

    #[test]
    fn retention_keeps_the_newest_and_reports_what_was_added_and_dropped() {
        let mut log = AuditLog::default();
        let first: Vec<_> = (0..AUDIT_COMMAND_ENTRIES_MAX as u64).map(|i| refusal("x", i)).collect();
        let mut appended = 0u64;
        while appended + (first.len() as u64) <= AUDIT_RETAINED_MAX as u64 {
            let c = log.append(&first).expect("append");
            assert_eq!(c.added, appended..appended + first.len() as u64);
            assert!(c.dropped.is_empty());
            appended += first.len() as u64;
        }
        // The next full command overflows by this much.
        let over = appended + first.len() as u64 - AUDIT_RETAINED_MAX as u64;
        let c = log.append(&first).expect("append");
        assert_eq!(c.dropped, 0..over);
        assert_eq!(c.added, appended..appended + first.len() as u64);
        assert_eq!(log.entries.len(), AUDIT_RETAINED_MAX);
        assert_eq!(log.dropped(), over);
        assert_eq!(log.get(over).map(|e| e.at_ms), Some(over % first.len() as u64));
        assert_eq!(log.get(over - 1), None);
        assert_eq!(log.iter().last().map(|(s, _)| s), Some(log.next_seq() - 1));
    }

    #[test]
    fn too_many_or_oversized_entries_are_refused_whole() {
        let mut log = AuditLog::default();
        let many = vec![refusal("x", 1); AUDIT_COMMAND_ENTRIES_MAX + 1];
        assert_eq!(log.append(&many), Err(AuditRefused::TooMany(AUDIT_COMMAND_ENTRIES_MAX + 1)));
        let mut long = refusal("x", 1);
        long.subject = "s".repeat(AUDIT_TEXT_BYTES_MAX + 1);
        assert_eq!(log.append(&[refusal("ok", 1), long]), Err(AuditRefused::BadEntry(1)));
        let mut zero = refusal("x", 1);
        zero.count = 0;
        assert_eq!(log.append(&[zero]), Err(AuditRefused::BadEntry(0)));
        assert_eq!(log, AuditLog::default());
    }

    #[test]
    fn text_is_cut_on_a_character_boundary() {
        assert_eq!(audit_text("short"), "short");
        let s = "é".repeat(AUDIT_TEXT_BYTES_MAX);
        let cut = audit_text(&s);
        assert!(cut.len() <= AUDIT_TEXT_BYTES_MAX && cut.ends_with("..."), "{}", cut.len());
    }
}
