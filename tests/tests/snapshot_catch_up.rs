//! A voter that was down while thousands of writes went by catches up from a streamed snapshot,
//! not by replaying a log kept forever (DESIGN.md, "Storage": snapshots and log compaction).
//!
//! The cluster snapshots every 50 entries and keeps 10 behind each snapshot, so the log the
//! returning node missed is long gone from its peers: the only way back is a snapshot, which must
//! carry the segments' bytes (their chunk files), not only the catalog.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tetrad_tests::grpc::Pusher;
use tetrad_tests::segments::{segment_bytes, segment_name, Expected};
use tetrad_tests::{metric, wait_for, LocalCluster, UpOptions};

const TENANT: &str = "snap";
const PRIMARY: &str = "eu-west";
const SEGMENTS: u64 = 2000;
/// Pushes in flight at once; the leader batches their log writes (group commit).
const CONCURRENCY: u64 = 8;
const TUNING: &str = "[raft]\nsnapshot_logs_since_last = 50\nmax_in_snapshot_log_to_keep = 10\n";

/// Segment `n`: a few hundred bytes to a few KiB.
fn segment(n: u64) -> (String, Vec<u8>) {
    let size = 200 + (n * 7919 % 3900) as usize;
    (segment_name(n), segment_bytes(&format!("snapshot_catch_up/{n}"), size))
}

#[test]
fn a_node_killed_under_load_catches_up_from_a_streamed_snapshot() {
    let cluster = LocalCluster::up(UpOptions { tuning: Some(TUNING.into()), ..UpOptions::default() });
    metric("snapshot_test_cluster_up_s", format!("{:.2}", cluster.up_elapsed.as_secs_f64()));
    cluster.create_sync_tenant(TENANT, PRIMARY);
    let (status, _) = cluster.wait_for_tenant_leader(TENANT, Duration::from_secs(60));
    let addrs: Vec<String> = status.nodes.iter().map(|n| n.api_addr.clone()).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let pusher = Pusher::new(addrs, cluster.identity());

    // The first segment gives the group a leader that has committed an entry of its term.
    let (name, bytes) = segment(1);
    rt.block_on(pusher.push(TENANT, &name, &bytes, Duration::from_secs(60)))
        .unwrap_or_else(|e| panic!("first push of {name}: {e}"));

    // Kill a voter outside the primary region that does not lead.
    let info = cluster.tenant_show(TENANT);
    let status = cluster.status().expect("status");
    let leader = status.tenant(TENANT).expect("tenant in status").leader.clone();
    let victim = info
        .voters
        .iter()
        .find(|v| **v != leader && status.region_of(v) != Some(PRIMARY))
        .unwrap_or_else(|| panic!("no voter outside {PRIMARY} besides the leader {leader}: {:?}", info.voters))
        .clone();
    let victim_region = status.region_of(&victim).expect("a node").to_owned();
    let replicas_in_region = info.voters.iter().filter(|v| status.region_of(v) == Some(&victim_region)).count();
    assert_eq!(
        replicas_in_region, 1,
        "{victim} must be its region's only replica, so that the region's lag is its own"
    );
    cluster.ctl(&["cluster", "kill-node", &victim]).expect_success();
    eprintln!("killed {victim} ({victim_region}), a voter of {TENANT}; the leader is {leader}");

    // Thousands of small segments while it is down.
    let started = Instant::now();
    let results: Vec<(u64, Result<_, _>)> = rt.block_on(async {
        let pusher = &pusher;
        let tasks = (0..CONCURRENCY).map(|worker| async move {
            let mut out = Vec::new();
            let mut n = 2 + worker;
            while n <= SEGMENTS + 1 {
                let (name, bytes) = segment(n);
                out.push((n, pusher.push(TENANT, &name, &bytes, Duration::from_secs(60)).await));
                n += CONCURRENCY;
            }
            out
        });
        futures::future::join_all(tasks).await.into_iter().flatten().collect()
    });
    let took = started.elapsed();
    let mut retried = 0;
    for (n, result) in &results {
        match result {
            Ok(pushed) => {
                // "Already present" is right only after an attempt that may have stored it.
                assert!(
                    !pushed.reply.already_present || pushed.maybe_stored_before,
                    "segment {n} was pushed once, yet the ack says already present: {pushed:?}"
                );
                retried += usize::from(!pushed.failed_attempts.is_empty());
            }
            Err(e) => panic!("push of segment {n} failed: {e}"),
        }
    }
    let examples: Vec<&String> =
        results.iter().filter_map(|(_, r)| r.as_ref().ok()).flat_map(|p| &p.failed_attempts).take(3).collect();
    eprintln!("{retried} pushes needed more than one attempt, e.g. {examples:?}");
    assert_eq!(results.len() as u64, SEGMENTS);
    eprintln!("pushed {SEGMENTS} small segments over gRPC with {CONCURRENCY} in flight in {:.1}s", took.as_secs_f64());
    metric("small_push_grpc_per_s", format!("{:.0}", SEGMENTS as f64 / took.as_secs_f64()));

    // Its region is behind by (about) everything pushed since the kill.
    let status = cluster.status().expect("status");
    let t = status.tenant(TENANT).expect("tenant in status");
    let behind = t.lag_of(&victim_region).map_or(0, |l| l.writes);
    assert!(behind > 0, "{victim_region} shows no lag with {victim} down: {}", t.lag_summary());
    let group = format!("group=t/{TENANT}/{}", t.epoch);
    eprintln!("{victim_region} is {behind} writes behind; tenant group {group}");

    // Start it again: it must catch up, by a snapshot.
    let log_before = cluster.node_log(&victim).len();
    let restarted = Instant::now();
    cluster.ctl(&["cluster", "start-node", &victim]).expect_success();
    wait_for(
        &format!("{victim} is up, {victim_region} has no lag and {victim}'s log says `snapshot installed` for {group}"),
        Duration::from_secs(120),
        || {
            let status = cluster.status()?;
            let up = status.node(&victim).is_some_and(|n| n.up);
            let t = status.tenant(TENANT).ok_or("tenant missing from status")?;
            let lag = t.lag_of(&victim_region).map(|l| l.writes);
            let log = cluster.node_log(&victim);
            let installed = log
                .get(log_before..)
                .unwrap_or("")
                .lines()
                .any(|l| l.contains("snapshot installed") && l.contains(&group));
            if up && lag == Some(0) && installed {
                Ok(())
            } else {
                Err(format!("up {up}, {victim_region} lag {lag:?} writes, snapshot installed {installed}"))
            }
        },
    );
    // From `start-node` to the first poll that saw the node caught up.
    metric("snapshot_catch_up_s", format!("{:.2}", restarted.elapsed().as_secs_f64()));

    // Everything is listed with its size and hash, and a sample comes back byte-identical.
    let expected: BTreeMap<String, Expected> = (1..=SEGMENTS + 1)
        .map(|n| {
            let (name, bytes) = segment(n);
            (name.clone(), Expected::of(&name, &bytes))
        })
        .collect();
    let listed: BTreeMap<String, Expected> = cluster
        .list(TENANT)
        .into_iter()
        .map(|s| (s.name.clone(), Expected { name: s.name, size: s.size, blake3: s.blake3 }))
        .collect();
    let missing: Vec<&String> = expected.keys().filter(|k| !listed.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} acked segments are not listed, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(listed, expected, "wal list differs from what was acked");
    for n in (1..=SEGMENTS + 1).step_by(50) {
        let (name, bytes) = segment(n);
        cluster.fetch_and_check(TENANT, &Expected::of(&name, &bytes));
    }

    // The returning node holds the bytes itself. Its chunk store is content-addressed
    // (node/src/storage/chunks.rs: `data/chunks/<tenant>/<first 2 hex digits>/<blake3 hex>`, a segment of
    // at most 1 MiB being one chunk), so every segment's hash names a file there whose bytes hash
    // to that name. Fetches go to the leader and could not show this.
    let chunks = cluster.node_dir(&victim).join("data").join("chunks").join(TENANT);
    let mut absent = Vec::new();
    for want in expected.values() {
        let path = chunks.join(&want.blake3[..2]).join(&want.blake3);
        match std::fs::read(&path) {
            Ok(bytes) if blake3::hash(&bytes).to_hex().as_str() == want.blake3 => {}
            Ok(_) => panic!("{victim}'s chunk file {} does not hold the bytes of {}", path.display(), want.name),
            Err(_) => absent.push(want.name.clone()),
        }
    }
    assert!(
        absent.is_empty(),
        "{victim} lacks the chunk files of {} of {} segments after catching up (e.g. {:?}) in {}",
        absent.len(),
        expected.len(),
        &absent[..absent.len().min(5)],
        chunks.display()
    );
}
