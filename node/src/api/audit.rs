//! Writes the API's audit trail into the meta group's audit log (`tetrad_core::directory::AuditLog`).
//!
//! Admin actions are written one by one, after the action and before its reply: they are few,
//! their callers hold the admin role, and an operator reading the log right after a failover
//! must find it there. Refusals go through a coalescing buffer (`tetrad_core::audit_buffer`) that
//! is flushed as one meta command at most once per [`AUDIT_FLUSH_INTERVAL`], so a client looping
//! on a refused call costs the cluster at most one small meta entry per node per interval, and
//! every refusal is still counted (ARCHITECTURE.md, "Audit log").

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tetrad_core::audit_buffer::AuditBuffer;

use crate::meta::state::{audit_text, AuditEntry, AuditOutcome, MetaCommand, MetaReply};
use crate::node::Node;

/// How long refusals gather before they are written.
pub const AUDIT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) struct AuditSink {
    node: Node,
    state: Mutex<SinkState>,
}

#[derive(Default)]
struct SinkState {
    buffer: AuditBuffer,
    /// A flush task is running; it stops when it finds the buffer empty.
    flushing: bool,
}

/// Who asked for what, as the audit log records it.
pub(crate) struct Request<'a> {
    pub subject: &'a str,
    pub role: &'a str,
    pub peer: &'a str,
    pub action: &'a str,
    pub tenant: Option<&'a str>,
}

impl AuditSink {
    pub(crate) fn new(node: Node) -> Arc<Self> {
        Arc::new(Self { node, state: Mutex::default() })
    }

    fn entry(&self, r: &Request<'_>, outcome: AuditOutcome) -> AuditEntry {
        let now = self.node.wall_now_ms();
        let outcome = match outcome {
            AuditOutcome::Done { detail } => AuditOutcome::Done { detail: audit_text(&detail) },
            AuditOutcome::Failed { reason } => AuditOutcome::Failed { reason: audit_text(&reason) },
            AuditOutcome::Refused { reason } => AuditOutcome::Refused { reason: audit_text(&reason) },
        };
        AuditEntry {
            at_ms: now,
            last_at_ms: now,
            node: self.node.id(),
            subject: audit_text(r.subject),
            role: audit_text(r.role),
            peer: audit_text(r.peer),
            action: audit_text(r.action),
            tenant: r.tenant.map(audit_text),
            outcome,
            count: 1,
        }
    }

    /// Records a refusal; it is written with the next flush.
    pub(crate) fn refused(self: &Arc<Self>, r: &Request<'_>, reason: &str) {
        let e = self.entry(r, AuditOutcome::Refused { reason: reason.to_owned() });
        let start = {
            let mut st = self.state.lock().expect("audit lock");
            st.buffer.add(e);
            !std::mem::replace(&mut st.flushing, true)
        };
        if start {
            tokio::spawn(Arc::clone(self).flush());
        }
    }

    /// Records an admin action's outcome, waiting until the meta group has it. A failure to
    /// write it is logged, not returned: the action has happened either way.
    pub(crate) async fn action(&self, r: &Request<'_>, outcome: AuditOutcome) {
        let e = self.entry(r, outcome);
        if let Err(reason) = self.write(vec![e]).await {
            tracing::error!(action = r.action, subject = r.subject, %reason, "could not write an admin action to the audit log");
        }
    }

    async fn write(&self, entries: Vec<AuditEntry>) -> Result<(), String> {
        match self.node.propose_meta(MetaCommand::Audit { entries }).await {
            Ok(MetaReply::Noted) => Ok(()),
            Ok(MetaReply::Refused { reason }) => Err(reason),
            Ok(other) => Err(format!("unexpected reply {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Writes the buffered refusals once per interval until an interval passes without any.
    async fn flush(self: Arc<Self>) {
        loop {
            tokio::time::sleep(AUDIT_FLUSH_INTERVAL).await;
            let entries = {
                let mut st = self.state.lock().expect("audit lock");
                if st.buffer.is_empty() {
                    st.flushing = false;
                    return;
                }
                st.buffer.take(self.node.id())
            };
            if let Err(reason) = self.write(entries.clone()).await {
                // Kept for the next flush (merged with what came meanwhile, still bounded).
                tracing::warn!(entries = entries.len(), %reason, "could not write refusals to the audit log; retrying");
                let mut st = self.state.lock().expect("audit lock");
                for e in entries {
                    st.buffer.add(e);
                }
            }
        }
    }
}
