//! `log-append`: durable Raft log appends on this machine's disk, the way a node makes them now
//! (the store's writer: a record appended to the node's log file, then fdatasync) and the way
//! it made them before session 5 (a redb write transaction with `Durability::Immediate` holding
//! the entry), one append at a time, each durable before the next starts.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use hdrhistogram::Histogram;
use rand::{RngExt, SeedableRng};
use tetrad_node::seams::disk::{DiskRef, OsDisk};
use tetrad_node::storage::raft_log::LogOp;
use tetrad_node::storage::store::Store;

const GROUP: &str = "t/bench/1";
const TABLE: redb::TableDefinition<(&str, u64), &[u8]> = redb::TableDefinition::new("log");

pub fn log_append(dir: &Path, count: u64, size: usize) -> Result<()> {
    let run = dir.join(format!("tetrad-bench-log-{}", std::process::id()));
    std::fs::create_dir_all(&run)?;
    let result = measure(&run, count, size);
    let _ = std::fs::remove_dir_all(&run);
    result
}

fn measure(run: &Path, count: u64, size: usize) -> Result<()> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let entries: Vec<Vec<u8>> = (0..count)
        .map(|_| {
            let mut d = vec![0u8; size];
            rng.fill(&mut d[..]);
            d
        })
        .collect();
    println!("dir: {} (entries of {size} B, one group, each append durable before the next)", run.display());

    // Now: the node's store, log files through the disk seam.
    let disk: DiskRef = Arc::new(OsDisk::new());
    let root = run.join("store");
    Store::init(disk.clone(), &root, "bench", 1)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut files = Histogram::<u64>::new(3)?;
    let started = Instant::now();
    rt.block_on(async {
        let store = Store::open(disk, &root, "bench")?;
        for (i, e) in entries.iter().enumerate() {
            let t = Instant::now();
            let op = LogOp::Entries { group: GROUP.into(), entries: vec![(i as u64 + 1, e.clone())] };
            store.log_write(vec![op]).await?;
            files.record(t.elapsed().as_micros() as u64)?;
        }
        anyhow::Ok(())
    })?;
    let files_secs = started.elapsed().as_secs_f64();

    // Before: one redb durable commit per append.
    let db = redb::Database::create(run.join("before.redb"))?;
    let mut redb_h = Histogram::<u64>::new(3)?;
    let started = Instant::now();
    for (i, e) in entries.iter().enumerate() {
        let t = Instant::now();
        let mut txn = db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        txn.open_table(TABLE)?.insert((GROUP, i as u64 + 1), e.as_slice())?;
        txn.commit()?;
        redb_h.record(t.elapsed().as_micros() as u64)?;
    }
    let redb_secs = started.elapsed().as_secs_f64();

    crate::report("log files (now)", &files);
    println!("  {:.0} appends/s", count as f64 / files_secs);
    crate::report("redb commit per append (before)", &redb_h);
    println!("  {:.0} appends/s", count as f64 / redb_secs);
    Ok(())
}
