//! The commands the meta group's log carries and the replies applying them gives.

use serde::{Deserialize, Serialize};

use super::{AckMark, AuditEntry, TailWrite, TenantEvent, TenantRecord};
use crate::NodeId;

// A command lives only between its proposal and its encoding (and from decoding to apply):
// boxing the large records would add an allocation per command and save nothing that is kept.
#[allow(clippy::large_enum_variant)]
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
    /// Appends audit entries (admin actions, coalesced refusals) to the audit log; refused
    /// whole, changing nothing, past the limits of `audit.rs`.
    Audit { entries: Vec<AuditEntry> },
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
