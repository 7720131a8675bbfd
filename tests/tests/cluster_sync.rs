//! A sync tenant on a real twelve-node cluster (four regions, real processes, QUIC on loopback),
//! driven with the real `tetradctl` binary: segments pushed come back byte-identical, and the
//! tenant keeps acking without operator action when its primary region is killed, losing none of
//! the writes it acked before, during or after the loss.
//!
//! Figures (cluster up time, 1 MiB push latency, the unavailability window after the region kill,
//! the returning region's catch-up) are printed as `metric NAME VALUE` lines, never asserted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tetrad_tests::segments::{segment_bytes, segment_name, write_segment, Expected};
use tetrad_tests::{metric, quantile, wait_for, LocalCluster, UpOptions, REGIONS};

const TENANT: &str = "acme";
const PRIMARY: &str = "eu-west";
const MIB: usize = 1 << 20;

/// One push made by the background writer while the primary region dies.
#[derive(Debug, Clone)]
struct PushRecord {
    n: u64,
    name: String,
    code: Option<i32>,
    start: Instant,
    end: Instant,
    output: String,
}

/// The seed of segment `n`'s bytes, so that a push can be repeated without keeping the file.
fn seed(n: u64) -> String {
    format!("cluster_sync/{n}")
}

/// Pushes segment `n` (`size` bytes) with tetradctl; the file is removed afterwards.
fn push_segment(cluster: &LocalCluster, n: u64, size: usize) -> (Expected, tetrad_tests::Ran) {
    let name = segment_name(n);
    let bytes = segment_bytes(&seed(n), size);
    let dir = cluster.scratch().join("push");
    let path = write_segment(&dir, &name, &bytes);
    let ran = cluster.push(TENANT, &path);
    std::fs::remove_file(&path).expect("remove the pushed file");
    (Expected::of(&name, &bytes), ran)
}

#[test]
fn sync_tenant_survives_the_loss_of_its_primary_region() {
    let test_started = Instant::now();
    let cluster = LocalCluster::up(UpOptions::default());
    metric("cluster_up_s", format!("{:.2}", cluster.up_elapsed.as_secs_f64()));

    // Placement: five voters, two in the primary region and one in each other region, so that
    // no region holds a quorum (DESIGN.md, "Replication modes").
    let info = cluster.create_sync_tenant(TENANT, PRIMARY);
    assert_eq!((info.mode.as_str(), info.primary.as_str()), ("sync", PRIMARY), "{info:?}");
    let (status, _) = cluster.wait_for_tenant_leader(TENANT, Duration::from_secs(60));
    let mut per_region: BTreeMap<&str, usize> = BTreeMap::new();
    for v in &info.voters {
        *per_region.entry(status.region_of(v).unwrap_or_else(|| panic!("voter {v} is not a node"))).or_default() += 1;
    }
    let want: BTreeMap<&str, usize> = REGIONS.iter().map(|r| (*r, if *r == PRIMARY { 2 } else { 1 })).collect();
    assert_eq!(per_region, want, "sync placement of {:?}", info.voters);

    // 50 segments of 1 MiB and 3 of 16 MiB, each fetched back byte-identical.
    let mut initial: Vec<Expected> = Vec::new();
    let mut n = 0;
    for i in 0..53 {
        n += 1;
        let size = if i < 50 { MIB } else { 16 * MIB };
        let (want, ran) = push_segment(&cluster, n, size);
        assert!(ran.success() && ran.stdout.contains("stored"), "push of {}: {ran}", want.name);
        initial.push(want);
    }
    for want in &initial {
        cluster.fetch_and_check(TENANT, want);
    }
    eprintln!("pushed and fetched back 50 x 1 MiB and 3 x 16 MiB segments");
    // With writes paused, every voter catches up: a sync tenant whose followers stay behind has
    // fewer up-to-date replicas than it claims when a region dies.
    let caught_up = cluster.wait_all_up_and_caught_up(TENANT, Duration::from_secs(60));
    eprintln!("every region caught up {:.1}s after the fetches", caught_up.as_secs_f64());

    // Latency of one client pushing 1 MiB segments one after the other.
    let mut latencies = Vec::new();
    let mut latency_segments = Vec::new();
    for _ in 0..200 {
        n += 1;
        let (want, ran) = push_segment(&cluster, n, MIB);
        assert!(ran.success(), "push of {}: {ran}", want.name);
        latencies.push(ran.elapsed);
        latency_segments.push(want);
    }
    latencies.sort();
    let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
    eprintln!(
        "1 MiB push latency over {} sequential `tetradctl wal push` runs (wall time of the whole CLI \
         process, its start included): p50 {} ms, p99 {} ms, max {} ms",
        latencies.len(),
        ms(quantile(&latencies, 0.5)),
        ms(quantile(&latencies, 0.99)),
        ms(quantile(&latencies, 1.0))
    );
    metric("push_1mib_cli_p50_ms", ms(quantile(&latencies, 0.5)));
    metric("push_1mib_cli_p99_ms", ms(quantile(&latencies, 0.99)));
    let mut acked: Vec<Expected> = initial.iter().chain(&latency_segments).cloned().collect();
    check_listed(&cluster, &acked);

    // The leader should be in the primary region; the drill kills the region that holds it.
    let (status, _) = wait_for("the tenant's leader is known", Duration::from_secs(60), || {
        let status = cluster.status()?;
        let t = status.tenant(TENANT).ok_or("tenant missing from status")?;
        if t.leader.is_empty() {
            return Err("no leader".into());
        }
        Ok(status)
    });
    let leader = status.tenant(TENANT).expect("present").leader.clone();
    let leader_region = status.region_of(&leader).expect("the leader is a node").to_owned();
    if leader_region != PRIMARY {
        eprintln!(
            "NOTE: the tenant's leader {leader} is in {leader_region}, not in its primary region {PRIMARY}; \
             killing {leader_region}, the region that holds the leader"
        );
    }
    let victim_region = leader_region;

    // A writer keeps pushing 1 MiB segments while the region dies.
    let records: Arc<Mutex<Vec<PushRecord>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let first_background = n + 1;
    let writer = {
        let records = Arc::clone(&records);
        let stop = Arc::clone(&stop);
        let cluster = &cluster;
        move || {
            let mut n = first_background;
            while !stop.load(Ordering::SeqCst) {
                let name = segment_name(n);
                let path = write_segment(&cluster.scratch().join("background"), &name, &segment_bytes(&seed(n), MIB));
                let start = Instant::now();
                let ran = cluster.ctl(&[
                    "--timeout".as_ref(),
                    "30s".as_ref(),
                    "wal".as_ref(),
                    "push".as_ref(),
                    "--tenant".as_ref(),
                    TENANT.as_ref(),
                    path.as_os_str(),
                ]);
                let end = Instant::now();
                std::fs::remove_file(&path).expect("remove the pushed file");
                records.lock().expect("records").push(PushRecord {
                    n,
                    name,
                    code: ran.code,
                    start,
                    end,
                    output: ran.output(),
                });
                n += 1;
            }
        }
    };
    let count_ok = |after: Option<Instant>| {
        records
            .lock()
            .expect("records")
            .iter()
            .filter(|r| r.code == Some(0) && after.is_none_or(|t| r.start >= t))
            .count()
    };
    let (kill_start, kill_done) = std::thread::scope(|scope| {
        let handle = scope.spawn(writer);
        // The writer must be stopped whatever happens here, or the scope would never end.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for("3 background pushes are acked before the kill", Duration::from_secs(60), || {
                let ok = count_ok(None);
                if ok >= 3 {
                    Ok(())
                } else {
                    Err(format!("{ok} acked"))
                }
            });
            // Not a precondition (a region may die at any moment), but it decides how soon the
            // survivors can commit: shown so that a slow failover can be told apart.
            if let Ok(status) = cluster.status() {
                let t = status.tenant(TENANT).expect("tenant in status");
                eprintln!("lag just before the kill: {}", t.lag_summary());
            }
            let kill_start = Instant::now();
            cluster.ctl(&["cluster", "kill-region", &victim_region]).expect_success();
            let kill_done = Instant::now();
            eprintln!("killed region {victim_region} (leader was {leader})");
            wait_for("5 pushes started after the region kill are acked", Duration::from_secs(120), || {
                let ok = count_ok(Some(kill_done));
                if ok >= 5 {
                    Ok(())
                } else {
                    let last = records.lock().expect("records").last().map(|r| r.output.clone()).unwrap_or_default();
                    Err(format!("{ok} acked; last push said: {last}"))
                }
            });
            (kill_start, kill_done)
        }));
        stop.store(true, Ordering::SeqCst);
        handle.join().expect("the background writer panicked");
        result.unwrap_or_else(|panic| {
            let now = cluster.ctl(&["status"]);
            eprintln!("status when the drill failed:\n{}{}", now.stdout, now.stderr);
            std::panic::resume_unwind(panic)
        })
    });
    let records = records.lock().expect("records").clone();

    // Unavailability: from the kill to the ack of the first push that started after it (an
    // upper bound of the tenant's RTO: it includes that push's own duration and CLI start).
    let first_after = records
        .iter()
        .filter(|r| r.code == Some(0) && r.start >= kill_done)
        .min_by_key(|r| r.end)
        .expect("waited for acked pushes after the kill");
    let window = first_after.end - kill_start;
    let spanning: Vec<&PushRecord> = records.iter().filter(|r| r.start < kill_start && r.end > kill_start).collect();
    eprintln!(
        "unavailability after killing {victim_region}: {:.2}s from the kill to the ack of {} (the first push started \
         after it); {} push(es) spanned the kill: {:?}",
        window.as_secs_f64(),
        first_after.name,
        spanning.len(),
        spanning
            .iter()
            .map(|r| (&r.name, r.code, format!("{:.2}s", (r.end - r.start).as_secs_f64())))
            .collect::<Vec<_>>()
    );
    metric("unavailability_after_region_kill_s", format!("{:.2}", window.as_secs_f64()));
    let codes: BTreeMap<String, usize> = records.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(format!("{:?}", r.code)).or_default() += 1;
        m
    });
    eprintln!("background pushes by exit code: {codes:?}");
    metric("background_pushes_unknown_outcome", records.iter().filter(|r| r.code == Some(3)).count());

    // Exit 0 is an ack; exit 3 is "outcome unknown" and must succeed when repeated (idempotent).
    // Any other code is a wrong answer to a valid push.
    for r in &records {
        assert!(matches!(r.code, Some(0) | Some(3)), "push {} answered neither ack nor unknown: {}", r.name, r.output);
    }
    for r in records.iter().filter(|r| r.code == Some(3)) {
        let (want, ran) = push_segment(&cluster, r.n, MIB);
        assert!(ran.success(), "repeating push {} (outcome unknown at first) failed: {ran}", want.name);
        eprintln!("repeated {} (outcome unknown at first): {}", want.name, ran.stdout.trim());
    }
    let background: Vec<Expected> =
        records.iter().map(|r| Expected::of(&r.name, &segment_bytes(&seed(r.n), MIB))).collect();
    acked.extend(background.iter().cloned());

    // With the region still down, every acked segment comes back byte-identical: fetched one by
    // one for those pushed around the kill and the first 53, compared by `wal list` (size and
    // blake3) for the 200 of the latency run.
    for want in initial.iter().chain(&background) {
        cluster.fetch_and_check(TENANT, want);
    }
    check_listed(&cluster, &acked);
    eprintln!("all {} acked segments are intact with {victim_region} down", acked.len());

    // The region comes back and catches up without operator action beyond starting it.
    cluster.ctl(&["cluster", "start-region", &victim_region]).expect_success();
    let caught_up = cluster.wait_all_up_and_caught_up(TENANT, Duration::from_secs(120));
    metric("region_restart_catch_up_s", format!("{:.2}", caught_up.as_secs_f64()));
    check_listed(&cluster, &acked);
    let status = cluster.status().expect("status");
    let t = status.tenant(TENANT).expect("present");
    eprintln!(
        "after {victim_region} returned: leader {} ({}), epoch {}, term {}, lag {}",
        t.leader,
        status.region_of(&t.leader).unwrap_or("?"),
        t.epoch,
        t.term,
        t.lag_summary()
    );
    eprintln!("test body took {:.1}s", test_started.elapsed().as_secs_f64());
}

/// `wal list` holds exactly the expected segments, with their sizes and hashes.
fn check_listed(cluster: &LocalCluster, expected: &[Expected]) {
    let listed: BTreeMap<String, (u64, String)> =
        cluster.list(TENANT).into_iter().map(|s| (s.name, (s.size, s.blake3))).collect();
    let want: BTreeMap<String, (u64, String)> =
        expected.iter().map(|e| (e.name.clone(), (e.size, e.blake3.clone()))).collect();
    if listed != want {
        let missing: BTreeSet<&String> = want.keys().filter(|k| !listed.contains_key(*k)).collect();
        let extra: BTreeSet<&String> = listed.keys().filter(|k| !want.contains_key(*k)).collect();
        let differ: Vec<&String> =
            want.keys().filter(|k| listed.get(*k).is_some_and(|l| Some(l) != want.get(*k))).collect();
        panic!(
            "wal list differs from what was acked: missing {missing:?}, unexpected {extra:?}, other bytes {differ:?}"
        );
    }
}
