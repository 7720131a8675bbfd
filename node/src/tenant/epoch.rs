//! A tenant's epochs on one node's store: what a sealed replica holds, seeding a promoted epoch
//! from it, and the divergent tail a returning old-epoch replica keeps aside (DESIGN.md,
//! "Promotion" and "Loss accounting").
//!
//! Everything here reads or writes a group's rows while the group is not running: a sealed
//! group is stopped before it is inspected, and a new epoch's group is seeded before it starts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use redb::ReadableDatabase;

use super::group_state::TenantState;
use crate::meta::state::{AckMark, TailWrite};
use crate::raft::log_store::{read_durable_log, DurableCommand, DurableLog};
use crate::raft::state_machine::{ApplyInfo, GroupState};
use crate::storage::chunks::Hash;
use crate::storage::store::{Store, StoreError, TxnFn, KV, SEGMENTS};

/// The writes a sealed replica holds durably: its applied catalog plus the puts in its log past
/// the applied position (they may have been acked: a new epoch keeps them).
#[derive(Clone, Debug, Default)]
pub struct SealedReplica {
    pub log: DurableLog,
    /// Segment name -> (blake3, proposal time, term, index), applied or not.
    pub writes: BTreeMap<String, (Hash, u64, u64, u64)>,
}

impl SealedReplica {
    /// Where this replica's durable log ends, with the writes counted up to it.
    pub fn mark(&self) -> AckMark {
        let (term, index) = self.log.last.unwrap_or((0, 0));
        let proposed_at_ms = self.writes.values().map(|w| w.1).max().unwrap_or(0);
        AckMark { term, index, writes: self.writes.len() as u64, proposed_at_ms }
    }
}

/// Reads what a stopped group of a tenant holds.
pub fn inspect(store: &Arc<Store>, group: &str) -> Result<SealedReplica, StoreError> {
    let log = read_durable_log(store, group)?;
    let state = TenantState::load(store, group)?;
    let mut writes: BTreeMap<String, (Hash, u64, u64, u64)> = state
        .catalog
        .segments
        .values()
        .map(|r| (r.name.clone(), (r.blake3, r.proposed_at_ms, r.term, r.index)))
        .collect();
    for e in &log.unapplied {
        if let Some((name, blake3, proposed_at_ms)) = e.command.as_ref().and_then(DurableCommand::put) {
            writes.entry(name.to_string()).or_insert((*blake3, proposed_at_ms, e.term, e.index));
        }
    }
    Ok(SealedReplica { log, writes })
}

const SEEDED: &str = "seeded-from";

/// Seeds `new_group` on this node from its stopped `old_group`: the applied catalog and every
/// durable put past the applied position, applied in log order (sideloaded puts by reference: no
/// chunk is read, see [`TenantState::apply_by_ref`]). One atomic store commit (chunk files of
/// whole entries are written and synced first), idempotent: a seeded group is left alone.
pub async fn seed(store: &Arc<Store>, old_group: &str, new_group: &str) -> Result<u64, StoreError> {
    if store.kv_get(new_group, SEEDED)?.is_some() {
        return Ok(0);
    }
    // Appends the stopped old group queued may still be committing (see raft/log_store.rs).
    store.flush().await?;
    let log = read_durable_log(store, old_group)?;
    let mut state = TenantState::load(store, old_group)?;
    let mut work: Vec<TxnFn> = vec![];
    // The applied catalog, copied row for row.
    let rows: Vec<(String, Vec<u8>)> = {
        let txn = store.db().begin_read().map_err(StoreError::db)?;
        let t = txn.open_table(SEGMENTS).map_err(StoreError::db)?;
        let mut rows = vec![];
        for item in t.range((old_group, "")..).map_err(StoreError::db)? {
            let (k, v) = item.map_err(StoreError::db)?;
            if k.value().0 != old_group {
                break;
            }
            rows.push((k.value().1.to_string(), v.value().to_vec()));
        }
        rows
    };
    let copied = rows.len() as u64;
    let ng = new_group.to_string();
    work.push(Box::new(move |txn| {
        let mut t = txn.open_table(SEGMENTS).map_err(StoreError::db)?;
        for (name, row) in &rows {
            t.insert((ng.as_str(), name.as_str()), row.as_slice()).map_err(StoreError::db)?;
        }
        Ok(())
    }));
    // The durable tail past the applied position: applied now, under the new group's name.
    let mut applied = 0;
    for e in &log.unapplied {
        let at = ApplyInfo { term: e.term, index: e.index };
        match &e.command {
            Some(DurableCommand::Whole(cmd)) => {
                crate::storage::store::blocking(|| state.apply(store, new_group, at, cmd, &mut work))?;
            }
            Some(DurableCommand::Sideloaded(put)) => state.apply_by_ref(new_group, at, put, &mut work),
            None => continue,
        }
        applied += 1;
    }
    work.push(Store::kv_put(new_group, SEEDED, old_group.as_bytes().to_vec()));
    store.write(work).await?;
    tracing::info!(%old_group, %new_group, copied, applied, "new epoch seeded from this replica's durable log");
    Ok(copied + applied)
}

/// The old-epoch writes this replica holds that the new epoch lacks (by name and bytes), in log
/// order. They stay where they are, in the old group's rows and log, never merged.
pub fn divergent_tail(replica: &SealedReplica, new_epoch: &BTreeMap<String, Hash>) -> Vec<TailWrite> {
    let mut tail: Vec<TailWrite> = replica
        .writes
        .iter()
        .filter(|(name, w)| new_epoch.get(*name) != Some(&w.0))
        .map(|(name, w)| TailWrite { name: name.clone(), term: w.2, index: w.3, proposed_at_ms: w.1 })
        .collect();
    tail.sort_by_key(|w| (w.term, w.index));
    tail
}

/// The groups of `tenant` this store holds rows for, with their epochs.
pub fn local_epochs(store: &Arc<Store>, tenant: &str) -> Result<BTreeSet<u64>, StoreError> {
    let prefix = format!("t/{tenant}/");
    let txn = store.db().begin_read().map_err(StoreError::db)?;
    let kv = txn.open_table(KV).map_err(StoreError::db)?;
    let mut out = BTreeSet::new();
    for item in kv.range((prefix.as_str(), "")..).map_err(StoreError::db)? {
        let (k, _) = item.map_err(StoreError::db)?;
        let Some(rest) = k.value().0.strip_prefix(&prefix) else { break };
        if let Ok(e) = rest.parse::<u64>() {
            out.insert(e);
        }
    }
    Ok(out)
}

const TAIL: &str = "divergent-tail";

/// Records locally that this replica's tail for `old_group` was listed with the meta group.
pub async fn note_tail_reported(store: &Arc<Store>, old_group: &str, tail: &[TailWrite]) -> Result<(), StoreError> {
    let bytes = postcard::to_stdvec(tail).expect("tail encodes");
    store.write(vec![Store::kv_put(old_group, TAIL, bytes)]).await
}

pub fn tail_reported(store: &Arc<Store>, old_group: &str) -> Result<bool, StoreError> {
    Ok(store.kv_get(old_group, TAIL)?.is_some())
}
