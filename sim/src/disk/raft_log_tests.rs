//! The node's Raft log files over the simulated disk: torn power losses, power lost inside a
//! sync, rolling, compaction and deletion, against a model of what was acked.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use tetrad_node::seams::disk::{Disk, DiskRef};
use tetrad_node::storage::raft_log::{LogOp, RaftLog};

use super::{splitmix64, DiskFaults, SimDisk};

type Model = BTreeMap<String, BTreeMap<u64, Vec<u8>>>;

fn apply(model: &mut Model, op: &LogOp) {
    match op {
        LogOp::Entries { group, entries } => {
            let g = model.entry(group.to_string()).or_default();
            for (i, b) in entries {
                g.insert(*i, b.clone());
            }
        }
        LogOp::TruncateFrom { group, from } => {
            if let Some(g) = model.get_mut(&**group) {
                g.split_off(from);
            }
        }
    }
}

fn clone_op(op: &LogOp) -> LogOp {
    match op {
        LogOp::Entries { group, entries } => LogOp::Entries { group: group.clone(), entries: entries.clone() },
        LogOp::TruncateFrom { group, from } => LogOp::TruncateFrom { group: group.clone(), from: *from },
    }
}

fn contents(log: &RaftLog) -> Model {
    let mut out = Model::new();
    for g in log.groups() {
        let entries: BTreeMap<u64, Vec<u8>> =
            log.read(&g, 0, u64::MAX).unwrap().into_iter().map(|(i, e)| (i, e.bytes().to_vec())).collect();
        if !entries.is_empty() {
            out.insert(g.to_string(), entries);
        }
    }
    out
}

fn without_empty(mut m: Model) -> Model {
    m.retain(|_, g| !g.is_empty());
    m
}

/// A few ops of the kind a node writes: entries of two groups, sometimes a truncation.
/// Truncations never reach at or below a group's purge point, as in Raft (only unapplied,
/// uncommitted entries are ever truncated).
fn ops(rng: &mut u64, next: &mut BTreeMap<&'static str, u64>, purged: &BTreeMap<String, u64>) -> Vec<LogOp> {
    let mut out = vec![];
    for group in ["meta", "t:acme:e1"] {
        *rng = splitmix64(*rng);
        let at = next.entry(group).or_insert(1);
        if (*rng).is_multiple_of(5) && *at > 3 {
            let floor = purged.get(group).map_or(1, |p| p + 1);
            let from = (*at - 1 - (*rng >> 8) % 3).max(floor);
            out.push(LogOp::TruncateFrom { group: group.into(), from });
            *at = from;
        }
        let n = 1 + (*rng >> 16) % 3;
        let entries = (0..n)
            .map(|k| {
                let len = 200 + ((*rng >> 24) + k * 977) as usize % 3000;
                (*at + k, (0..len).map(|b| splitmix64(*rng ^ (k << 40) ^ b as u64) as u8).collect())
            })
            .collect();
        *at += n;
        out.push(LogOp::Entries { group: group.into(), entries });
    }
    out
}

#[test]
fn raft_log_over_torn_crashes_keeps_every_synced_record_and_at_most_a_prefix_of_the_rest_by_record() {
    const SEEDS: u64 = 40;
    const ROUNDS: u64 = 8;
    let mut interrupted = 0;
    let mut unsynced_kept = 0;
    let mut unsynced_lost = 0;
    let mut deleted_files = 0;
    let mut torn_units_landed = 0;
    for seed in 0..SEEDS {
        let unit = [1, 64, 512, 4096][(seed % 4) as usize];
        let disk = SimDisk::new();
        let dir = PathBuf::from("/n1/data/raftlog");
        disk.create_dir_all(&dir).unwrap();
        disk.set_faults(DiskFaults { torn_write_on_crash: true, torn_unit_bytes: unit });
        let dref: DiskRef = Arc::new(disk.clone());
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = BTreeMap::new();
        let mut acked = Model::new();
        // A purge marker per group, as redb would keep it durably.
        let mut purged: BTreeMap<String, u64> = BTreeMap::new();
        for round in 0..ROUNDS {
            let context = format!("seed {seed} (unit {unit}) round {round}");
            let log = RaftLog::open(dref.clone(), &dir, 16 << 10).unwrap();
            for (g, upto) in &purged {
                log.purge_upto(g, *upto);
            }
            assert_eq!(contents(&log), without_empty(acked.clone()), "{context}: recovery lost or invented entries");
            // Synced writes, with purges and upkeep between them.
            for _ in 0..6 {
                let batch = ops(&mut rng, &mut next, &purged);
                for op in &batch {
                    apply(&mut acked, op);
                }
                log.write(batch, true).unwrap();
                if rng.is_multiple_of(3) {
                    let g = "t:acme:e1";
                    // Raft purges only below the last entry (at most up to the applied one).
                    let span = acked.get(g).and_then(|e| Some((*e.first_key_value()?.0, *e.last_key_value()?.0)));
                    if let Some((first, last)) = span.filter(|(f, l)| f + 2 < *l) {
                        let upto = (first + 2).min(last - 1);
                        log.purge_upto(g, upto);
                        purged.insert(g.into(), upto);
                        acked.get_mut(g).unwrap().retain(|i, _| *i > upto);
                    }
                }
                log.maintain().unwrap();
                assert_eq!(
                    contents(&log),
                    without_empty(acked.clone()),
                    "{context}: the running log differs from what was written"
                );
            }
            deleted_files += log.stats().deleted_files;
            // Then either unsynced writes and a power loss, or a power loss inside a sync.
            let crash_seed = seed * ROUNDS + round;
            let pending: Vec<LogOp> = ops(&mut rng, &mut next, &purged);
            let mut outcomes = vec![acked.clone()];
            let mut state = acked.clone();
            // One record per entry: a torn tail can end inside an op.
            for op in &pending {
                match op {
                    LogOp::Entries { group, entries } => {
                        for e in entries {
                            apply(&mut state, &LogOp::Entries { group: group.clone(), entries: vec![e.clone()] });
                            outcomes.push(state.clone());
                        }
                    }
                    LogOp::TruncateFrom { .. } => {
                        apply(&mut state, op);
                        outcomes.push(state.clone());
                    }
                }
            }
            if round % 2 == 0 {
                disk.crash_at_sync(1, crash_seed);
                assert!(log.write(pending.iter().map(clone_op).collect(), true).is_err(), "{context}");
                interrupted += 1;
            } else {
                log.write(pending.iter().map(clone_op).collect(), false).unwrap();
                disk.crash_with(crash_seed);
            }
            drop(log);
            let log = RaftLog::open(dref.clone(), &dir, 16 << 10).unwrap();
            for (g, upto) in &purged {
                log.purge_upto(g, *upto);
            }
            let found = contents(&log);
            let k = outcomes.iter().position(|o| without_empty(o.clone()) == found);
            let Some(k) = k else {
                let keys = |m: &Model| -> Vec<(String, Vec<u64>)> {
                    m.iter().map(|(g, e)| (g.clone(), e.keys().copied().collect())).collect()
                };
                panic!(
                    "{context}: recovered state is neither the acked one nor it plus a prefix of the unsynced ops\nfound {:?}\nacked {:?}\nall {:?}",
                    keys(&found),
                    keys(&outcomes[0]),
                    keys(outcomes.last().unwrap())
                );
            };
            if k == 0 {
                unsynced_lost += 1;
            } else {
                unsynced_kept += 1;
            }
            acked = outcomes.swap_remove(k);
            // What the next writes build on: the recovered tail (a truncation that was lost
            // must not leave `next` past the log's end).
            for (g, n) in next.iter_mut() {
                *n = acked.get(*g).and_then(|e| e.last_key_value()).map_or(*n, |(i, _)| i + 1).min(*n);
            }
        }
        torn_units_landed += disk.stats().torn_units_landed;
    }
    assert!(interrupted >= SEEDS * ROUNDS / 2);
    assert!(torn_units_landed > 0, "no crash tore anything");
    assert!(unsynced_kept > 0 && unsynced_lost > 0, "kept {unsynced_kept}, lost {unsynced_lost}: both should occur");
    assert!(deleted_files > 0, "no log file was ever deleted: rolling and upkeep went untested");
}
