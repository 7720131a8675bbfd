//! The meta group's replicated state and its commands. The state machine itself (what each
//! command decides) is pure and lives in `tetrad-core` (`node/core/src/directory.rs`); this module
//! re-exports it under its old path and persists it as a Raft group's state.

/// The node's name for a tenant's health (`tetrad_core::directory::TenantHealth`), kept so that
/// code which says `meta::state::TenantState` reads as before.
pub use tetrad_core::directory::TenantHealth as TenantState;
pub use tetrad_core::directory::*;

mod group_state {
    //! The meta directory as a Raft group's state: the directory persisted as one blob per
    //! apply, the audit log as one row per entry (`audit/<seq>`, with `audit_range` holding the
    //! retained sequence range), written only when an apply changed it. A snapshot is the
    //! directory's encoding followed by the audit log's: a node that predates the audit log
    //! decodes the directory and ignores the rest.
    use std::ops::Range;
    use std::sync::Arc;

    use super::{AuditEntry, AuditLog, MetaState};
    use crate::raft::state_machine::{ApplyInfo, GroupState};
    use crate::raft::{Command, Reply};
    use crate::storage::store::{Store, StoreError, TxnFn};

    fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt { what: what.into(), detail: e.to_string() }
    }

    fn decode(b: &[u8]) -> Result<MetaState, StoreError> {
        postcard::from_bytes(b).map_err(|e| corrupt("meta state", e))
    }

    fn audit_key(seq: u64) -> String {
        format!("audit/{seq:020}")
    }

    const AUDIT_RANGE: &str = "audit_range";

    fn load_audit(store: &Arc<Store>, group: &str) -> Result<AuditLog, StoreError> {
        let Some(b) = store.kv_get(group, AUDIT_RANGE)? else { return Ok(AuditLog::default()) };
        let (first, next): (u64, u64) = postcard::from_bytes(&b).map_err(|e| corrupt("audit range", e))?;
        if next < first || next - first > super::AUDIT_RETAINED_MAX as u64 {
            return Err(corrupt("audit range", format!("{first}..{next} is not a retained range")));
        }
        let mut log = AuditLog { first_seq: first, entries: Default::default() };
        for seq in first..next {
            let row = store
                .kv_get(group, &audit_key(seq))?
                .ok_or_else(|| corrupt("audit log", format!("row {seq} is missing")))?;
            let e: AuditEntry = postcard::from_bytes(&row).map_err(|e| corrupt("audit entry", e))?;
            log.entries.push_back(e);
        }
        Ok(log)
    }

    /// Stages the rows that take the persisted audit log from `before` (a retained range) to `log`.
    fn stage_audit(group: &str, before: Range<u64>, log: &AuditLog, work: &mut Vec<TxnFn>) {
        let after = log.first_seq..log.next_seq();
        if before == after {
            return;
        }
        for seq in before.clone().filter(|s| !after.contains(s)) {
            work.push(Store::kv_delete(group, &audit_key(seq)));
        }
        for (seq, e) in log.iter().filter(|(s, _)| !before.contains(s)) {
            work.push(Store::kv_put(group, &audit_key(seq), postcard::to_stdvec(e).expect("audit entry encodes")));
        }
        work.push(Store::kv_put(
            group,
            AUDIT_RANGE,
            postcard::to_stdvec(&(after.start, after.end)).expect("range encodes"),
        ));
    }

    impl GroupState for MetaState {
        fn incarnations(&self) -> Vec<(crate::seams::net::NodeId, u64)> {
            self.nodes.iter().map(|(id, r)| (*id, r.incarnation)).collect()
        }

        fn load(store: &Arc<Store>, group: &str) -> Result<Self, StoreError> {
            let mut state = match store.kv_get(group, "state")? {
                Some(b) => decode(&b)?,
                None => MetaState::default(),
            };
            state.audit = load_audit(store, group)?;
            Ok(state)
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
            let before = self.audit.first_seq..self.audit.next_seq();
            let reply = MetaState::apply(self, c);
            stage_audit(group, before, &self.audit, work);
            Ok(Reply::Meta(reply))
        }

        // The directory is one value: written once per batch of applies, not once per command.
        fn stage_whole(&self, group: &str, work: &mut Vec<TxnFn>) {
            work.push(Store::kv_put(group, "state", postcard::to_stdvec(self).expect("meta state encodes")));
        }

        fn snapshot_bytes(&self, _store: &Arc<Store>) -> Result<Vec<u8>, StoreError> {
            let mut b = postcard::to_stdvec(self).expect("meta state encodes");
            b.extend(postcard::to_stdvec(&self.audit).expect("audit log encodes"));
            Ok(b)
        }

        fn install(
            &mut self,
            _store: &Arc<Store>,
            group: &str,
            bytes: &[u8],
            work: &mut Vec<TxnFn>,
        ) -> Result<(), StoreError> {
            let (mut next, rest) =
                postcard::take_from_bytes::<MetaState>(bytes).map_err(|e| corrupt("meta snapshot", e))?;
            next.audit = if rest.is_empty() {
                AuditLog::default()
            } else {
                postcard::from_bytes(rest).map_err(|e| corrupt("meta snapshot's audit log", e))?
            };
            if next.audit.entries.len() > super::AUDIT_RETAINED_MAX {
                return Err(corrupt("meta snapshot's audit log", "more entries than are retained"));
            }
            let before = self.audit.first_seq..self.audit.next_seq();
            work.push(Store::kv_put(group, "state", postcard::to_stdvec(&next).expect("meta state encodes")));
            // Rows for every retained entry of the snapshot: the old rows are deleted, then
            // rewritten (an entry with the same number is the same entry, but a snapshot
            // replaces the state whole and this keeps the rule simple).
            stage_audit(group, before, &AuditLog::default(), work);
            stage_audit(group, 0..0, &next.audit, work);
            *self = next;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::raft::state_machine::{ApplyInfo, GroupState};
    use crate::raft::Command;
    use crate::seams::disk::{DiskRef, OsDisk};
    use crate::storage::store::Store;

    fn store(root: &std::path::Path) -> Arc<Store> {
        let disk: DiskRef = Arc::new(OsDisk::new());
        Store::init(disk.clone(), root, "n1", 7).unwrap();
        Store::open(disk, root, "n1").unwrap()
    }

    fn entry(i: u64) -> AuditEntry {
        AuditEntry {
            at_ms: i,
            last_at_ms: i,
            node: 1,
            subject: format!("s{i}"),
            role: "admin".into(),
            peer: "::1".into(),
            action: "FailoverTenant".into(),
            tenant: Some("acme".into()),
            outcome: AuditOutcome::Done { detail: "ok".into() },
            count: 1,
        }
    }

    #[tokio::test]
    async fn the_audit_log_persists_row_by_row_past_retention_and_travels_in_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let st = store(&dir.path().join("a"));
        let mut state = <MetaState as GroupState>::load(&st, "meta").unwrap();
        let per = AUDIT_COMMAND_ENTRIES_MAX as u64;
        let commands = AUDIT_RETAINED_MAX as u64 / per + 2;
        for c in 0..commands {
            let entries = (c * per..(c + 1) * per).map(entry).collect();
            let mut work = vec![];
            let r = GroupState::apply(
                &mut state,
                &st,
                "meta",
                ApplyInfo { term: 1, index: c + 1 },
                &Command::Meta(MetaCommand::Audit { entries }),
                &mut work,
            );
            assert_eq!(r.unwrap(), crate::raft::Reply::Meta(MetaReply::Noted));
            state.stage_whole("meta", &mut work);
            st.write(work).await.unwrap();
        }
        assert_eq!(state.audit.entries.len(), AUDIT_RETAINED_MAX);
        assert_eq!(state.audit.dropped(), commands * per - AUDIT_RETAINED_MAX as u64);
        let reloaded = <MetaState as GroupState>::load(&st, "meta").unwrap();
        assert_eq!(reloaded, state, "the log reads back as it was applied");
        // A dropped entry's row is gone, not just unreferenced.
        assert_eq!(st.kv_get("meta", &format!("audit/{:020}", state.audit.first_seq - 1)).unwrap(), None);

        // A snapshot carries the log; a snapshot of a node without one (the directory's bytes
        // alone) installs with an empty log.
        let other = store(&dir.path().join("b"));
        let mut b = <MetaState as GroupState>::load(&other, "meta").unwrap();
        let mut work = vec![];
        b.install(&other, "meta", &state.snapshot_bytes(&st).unwrap(), &mut work).unwrap();
        other.write(work).await.unwrap();
        assert_eq!(<MetaState as GroupState>::load(&other, "meta").unwrap(), state);
        let old_format = postcard::to_stdvec(&state).unwrap();
        let mut work = vec![];
        b.install(&other, "meta", &old_format, &mut work).unwrap();
        other.write(work).await.unwrap();
        let back = <MetaState as GroupState>::load(&other, "meta").unwrap();
        assert_eq!(back.audit, AuditLog::default());
        assert_eq!(back.tenants, state.tenants);
        assert_eq!(other.kv_get("meta", &format!("audit/{:020}", state.audit.first_seq)).unwrap(), None);
    }

    #[tokio::test]
    async fn an_oversized_audit_command_is_refused_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let st = store(dir.path());
        let mut state = <MetaState as GroupState>::load(&st, "meta").unwrap();
        let entries = (0..AUDIT_COMMAND_ENTRIES_MAX as u64 + 1).map(entry).collect();
        let mut work = vec![];
        let r = GroupState::apply(
            &mut state,
            &st,
            "meta",
            ApplyInfo { term: 1, index: 1 },
            &Command::Meta(MetaCommand::Audit { entries }),
            &mut work,
        );
        assert!(matches!(r.unwrap(), crate::raft::Reply::Meta(MetaReply::Refused { .. })));
        assert!(work.is_empty());
        assert_eq!(state.audit, AuditLog::default());
    }
}
