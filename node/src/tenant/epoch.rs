//! A tenant's epochs on one node's store: what a sealed replica holds, seeding a promoted epoch
//! from it, and the divergent tail a returning old-epoch replica keeps aside (DESIGN.md,
//! "Promotion" and "Loss accounting").
//!
//! Everything here reads or writes a group's rows while the group is not running: a sealed
//! group is stopped before it is inspected, and a new epoch's group is seeded before it starts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use redb::ReadableDatabase;

use super::catalog::TenantCommand;
use super::group_state::TenantState;
use crate::meta::state::{AckMark, TailWrite};
use crate::raft::log_store::{read_durable_log, DurableCommand, DurableLog};
use crate::raft::state_machine::{ApplyInfo, GroupState};
use crate::raft::Command;
use crate::storage::chunks::Hash;
use crate::storage::store::{Store, StoreError, TxnFn, KV, RECORDS, SEGMENTS};
use tetrad_core::records::Change;

/// The writes a sealed replica holds durably: its applied catalog plus the puts in its log past
/// the applied position (they may have been acked: a new epoch keeps them).
#[derive(Clone, Debug, Default)]
pub struct SealedReplica {
    pub log: DurableLog,
    /// Segment name -> (blake3, proposal time, term, index), applied or not; record writes
    /// under [`record_write_name`] (a current row, or an operation of an unapplied entry).
    pub writes: BTreeMap<String, (Hash, u64, u64, u64)>,
    /// Applied record changes no current row stands for (overwritten or deleted since): counted
    /// in the replica's writes, as the leader's ack marks count them, but never listed.
    pub superseded_record_writes: u64,
}

/// How a record write is named in loss accounting: by key and the log position of the entry
/// that made it (a row keeps both, also when a promotion seeds it into a new epoch). A segment
/// name never contains `/`, so the two kinds never collide.
pub fn record_write_name(key: &str, term: u64, index: u64) -> String {
    format!("record/{key}@{term}.{index}")
}

/// What a new epoch holds of records, as [`divergent_tail`] compares it: each current row by
/// its write's name and the blake3 of its value. A row a later write replaced is not listed, so
/// an old-epoch write the new epoch held and then overwrote counts as divergent: the loss
/// record's maximum may be high, never low.
pub fn record_names(table: &tetrad_core::records::RecordTable) -> impl Iterator<Item = (String, Hash)> + '_ {
    table.rows.values().map(|r| (record_write_name(&r.key, r.term, r.index), *blake3::hash(&r.value).as_bytes()))
}

impl SealedReplica {
    /// Where this replica's durable log ends, with the writes counted up to it.
    pub fn mark(&self) -> AckMark {
        let (term, index) = self.log.last.unwrap_or((0, 0));
        let proposed_at_ms = self.writes.values().map(|w| w.1).max().unwrap_or(0);
        AckMark { term, index, writes: self.writes.len() as u64 + self.superseded_record_writes, proposed_at_ms }
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
    let superseded_record_writes = state.records.writes.saturating_sub(state.records.rows.len() as u64);
    for (r, (name, hash)) in state.records.rows.values().zip(record_names(&state.records)) {
        writes.insert(name, (hash, r.proposed_at_ms, r.term, r.index));
    }
    let epoch = tetrad_core::directory::parse_group(group).map_or(1, |(_, e)| e);
    let mut tail_table: Option<tetrad_core::records::RecordTable> = None;
    for e in &log.unapplied {
        let command = match &e.command {
            Some(DurableCommand::Sideloaded(s)) => {
                writes.entry(s.name.clone()).or_insert((s.blake3, s.proposed_at_ms, e.term, e.index));
                continue;
            }
            Some(DurableCommand::Whole(c)) => Some(c.as_ref()),
            None => None,
        };
        match command {
            Some(Command::Tenant(TenantCommand::PutSegment { name, blake3, proposed_at_ms, .. }))
            | Some(Command::Tenant(TenantCommand::PutSegmentRef { name, blake3, proposed_at_ms, .. })) => {
                writes.entry(name.clone()).or_insert((*blake3, *proposed_at_ms, e.term, e.index));
            }
            // Each change an unapplied record write would make may have been acked: decided on a
            // copy of the table in log order, as applying would, so that a write whose condition
            // fails (or that changes nothing) is not counted; each change is listed by name (a
            // delete by the blake3 of nothing, which no new-epoch row carries).
            Some(Command::Tenant(TenantCommand::Records { ops, proposed_at_ms })) => {
                let table = tail_table.get_or_insert_with(|| state.records.clone());
                let d = table.decide(epoch, ops, *proposed_at_ms, tetrad_core::LogPos::new(e.term, e.index));
                for c in &d.changes {
                    let (key, hash) = match c {
                        Change::Set(row) => (row.key.as_str(), *blake3::hash(&row.value).as_bytes()),
                        Change::Remove { key } => (key.as_str(), *blake3::hash(b"").as_bytes()),
                    };
                    writes.insert(record_write_name(key, e.term, e.index), (hash, *proposed_at_ms, e.term, e.index));
                }
                table.apply(&d.changes);
            }
            _ => {}
        }
    }
    Ok(SealedReplica { log, writes, superseded_record_writes })
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
    // The applied records, row for row, and their counters (so versions continue, and the
    // writes counted match the ack marks the old leader reported).
    work.push(copy_records(store, old_group, new_group)?);
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

/// Stages a copy of `old_group`'s record rows and counters under `new_group`.
fn copy_records(store: &Arc<Store>, old_group: &str, new_group: &str) -> Result<TxnFn, StoreError> {
    use super::group_state::RECORD_COUNTERS;
    let mut rows: Vec<(String, Vec<u8>)> = vec![];
    {
        let txn = store.db().begin_read().map_err(StoreError::db)?;
        match txn.open_table(RECORDS) {
            Ok(t) => {
                for item in t.range((old_group, "")..).map_err(StoreError::db)? {
                    let (k, v) = item.map_err(StoreError::db)?;
                    if k.value().0 != old_group {
                        break;
                    }
                    rows.push((k.value().1.to_string(), v.value().to_vec()));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(StoreError::db(e)),
        }
    }
    let counters = store.kv_get(old_group, RECORD_COUNTERS)?;
    let ng = new_group.to_string();
    Ok(Box::new(move |txn| {
        let mut t = txn.open_table(RECORDS).map_err(StoreError::db)?;
        for (key, row) in &rows {
            t.insert((ng.as_str(), key.as_str()), row.as_slice()).map_err(StoreError::db)?;
        }
        drop(t);
        match counters {
            Some(c) => Store::kv_put(&ng, RECORD_COUNTERS, c)(txn),
            None => Ok(()),
        }
    }))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seams::disk::{DiskRef, OsDisk};
    use tetrad_core::records::{RecordOp, RecordOutcome, RecordReply, VERSION_EPOCH_SHIFT};

    fn put(key: &str, value: &[u8]) -> Command {
        Command::Tenant(TenantCommand::Records {
            ops: vec![RecordOp::Put { key: key.into(), value: value.to_vec(), if_version: None }],
            proposed_at_ms: 9,
        })
    }

    #[tokio::test]
    async fn a_seeded_epoch_holds_the_records_and_versions_above_the_old_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let disk: DiskRef = Arc::new(OsDisk::new());
        let root = dir.path().join("n");
        Store::init(disk.clone(), &root, "n1", 7).unwrap();
        let store = Store::open(disk, &root, "n1").unwrap();
        let (old, new) = ("t/x/1", "t/x/2");
        let mut st = TenantState::load(&store, old).unwrap();
        for (i, cmd) in [put("a", b"1"), put("b", b"2"), put("a", b"3")].iter().enumerate() {
            let mut work = vec![];
            st.apply(&store, old, ApplyInfo { term: 1, index: i as u64 + 1 }, cmd, &mut work).unwrap();
            store.write(work).await.unwrap();
        }
        let sealed = inspect(&store, old).unwrap();
        // Three changes: the overwritten one is counted but not listed.
        assert_eq!(sealed.mark().writes, 3);
        assert_eq!(sealed.superseded_record_writes, 1);
        assert!(sealed.writes.contains_key(&record_write_name("a", 1, 3)));
        assert!(sealed.writes.contains_key(&record_write_name("b", 1, 2)));
        seed(&store, old, new).await.unwrap();
        let mut seeded = TenantState::load(&store, new).unwrap();
        assert_eq!(seeded.records, st.records, "rows and counters copied");
        assert_eq!(seeded.last_mark().map_or(seeded.records.writes, |m| m.writes), 3);
        // The new epoch's first change versions in its own range.
        let mut work = vec![];
        let r = seeded.apply(&store, new, ApplyInfo { term: 1, index: 1 }, &put("b", b"new"), &mut work).unwrap();
        let want = 2 << VERSION_EPOCH_SHIFT;
        assert_eq!(
            r,
            crate::raft::Reply::Tenant(super::super::catalog::TenantReply::Records(RecordReply::Done(vec![
                RecordOutcome::Put { key: "b".into(), version: want, changed: true }
            ])))
        );
        // The new epoch's names list its rows as the divergent tail compares them.
        let names: BTreeMap<String, Hash> = record_names(&seeded.records).collect();
        let tail = divergent_tail(&sealed, &names);
        assert_eq!(tail.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(), [record_write_name("b", 1, 2)]);
    }
}
