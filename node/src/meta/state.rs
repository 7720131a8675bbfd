//! The meta group's replicated state and its commands. The state machine itself (what each
//! command decides) is pure and lives in `tetrad-core` (`node/core/src/directory.rs`); this module
//! re-exports it under its old path and persists it as a Raft group's state.

/// The node's name for a tenant's health (`tetrad_core::directory::TenantHealth`), kept so that
/// code which says `meta::state::TenantState` reads as before.
pub use tetrad_core::directory::TenantHealth as TenantState;
pub use tetrad_core::directory::*;

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
        fn incarnations(&self) -> Vec<(crate::seams::net::NodeId, u64)> {
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
