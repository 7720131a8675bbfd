//! Pushes by reference against a real local cluster (issue #12): a segment larger than one chunk
//! goes as its chunk list, then only the chunks the tenant lacks.
//!
//! 1. A 256 MiB object is pushed: every byte is sent once, no node's peak resident memory grows
//!    by anything near the object's size (the node never holds it whole), and it comes back
//!    byte for byte.
//! 2. A copy with one chunk-aligned MiB changed, under a new name, sends at most 2 MiB.
//! 3. A re-push of the first sends nothing and is "already present".
//! 4. Every member of the tenant holds every chunk without a repair (`verify`): the chunks reached
//!    the followers and learners before they appended the entry that references them.

use std::time::Duration;

use tetrad_proto::json::Verify;
use tetrad_tests::segments::{segment_bytes, segment_name, write_segment, Expected};
use tetrad_tests::{LocalCluster, UpOptions};

const TENANT: &str = "by-ref";
const PRIMARY: &str = "eu-west";
const MIB: usize = 1 << 20;
const OBJECT: usize = 256 * MIB;

/// The bytes tetradctl says it sent ("...; sent N bytes)").
fn sent_bytes(stdout: &str) -> u64 {
    let at = stdout.rfind("sent ").unwrap_or_else(|| panic!("no byte count in {stdout:?}"));
    stdout[at + 5..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {stdout:?}"))
}

/// Peak resident set of a process (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).and_then(|k| k.parse::<u64>().ok()).expect("kB") * 1024
}

#[test]
fn a_large_object_goes_by_reference_sends_only_what_changed_and_never_sits_in_memory_whole() {
    let cluster = LocalCluster::up(UpOptions::default());
    cluster.create_sync_tenant(TENANT, PRIMARY);
    cluster.wait_for_tenant_leader(TENANT, Duration::from_secs(60));
    let dir = cluster.scratch().join("objects");
    let peaks = |c: &LocalCluster| -> Vec<(String, u64)> {
        c.node_names()
            .into_iter()
            .map(|n| {
                let pid = c.node_pid(&n).unwrap_or_else(|| panic!("{n} has no pid"));
                let peak = peak_rss(pid);
                (n, peak)
            })
            .collect()
    };
    // A small push first, so every node's memory has settled into serving writes.
    let warm = write_segment(&dir, &segment_name(1), &segment_bytes("by-ref/warm", 3 * MIB + 1));
    cluster.push(TENANT, &warm).expect_success();
    let before = peaks(&cluster);

    let mut bytes = segment_bytes("by-ref/object", OBJECT);
    let first = Expected::of(&segment_name(2), &bytes);
    let path = write_segment(&dir, &first.name, &bytes);
    let ran = cluster.push(TENANT, &path);
    let out = ran.expect_success();
    assert!(out.contains("stored"), "{ran}");
    assert_eq!(sent_bytes(out), OBJECT as u64, "the first push sends every byte once: {ran}");
    let after = peaks(&cluster);
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        eprintln!("{name}: peak RSS {} MiB -> {} MiB", b / MIB as u64, a / MIB as u64);
        assert!(
            a.saturating_sub(*b) < (OBJECT / 2) as u64,
            "{name}'s peak resident memory grew by {} MiB for a {} MiB object",
            a.saturating_sub(*b) / MIB as u64,
            OBJECT / MIB
        );
    }

    // One MiB changed, at a chunk boundary, under a new name.
    for b in &mut bytes[100 * MIB..101 * MIB] {
        *b = !*b;
    }
    let second = Expected::of(&segment_name(3), &bytes);
    let path2 = write_segment(&dir, &second.name, &bytes);
    drop(bytes);
    let ran = cluster.push(TENANT, &path2);
    let sent = sent_bytes(ran.expect_success());
    assert!(sent <= 2 * MIB as u64 && sent > 0, "one changed MiB sent {sent} bytes: {ran}");

    // A re-push of the first sends nothing.
    let ran = cluster.push(TENANT, &path);
    let out = ran.expect_success();
    assert!(out.contains("already present"), "{ran}");
    assert_eq!(sent_bytes(out), 0, "{ran}");

    cluster.fetch_and_check(TENANT, &first);
    cluster.fetch_and_check(TENANT, &second);

    // Every member holds every chunk, none repaired: the bytes reached each before its append.
    cluster.wait_all_up_and_caught_up(TENANT, Duration::from_secs(240));
    // Verify checks each segment's chunk references (a chunk shared by two segments twice).
    let want_chunks = 4 + 256 + 256;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ran = cluster.ctl(&["verify", "--tenant", TENANT, "--json"]);
        let v: Verify = serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("verify --json ({e}): {ran}"));
        let applied = v.members.iter().all(|m| m.checked == want_chunks);
        if applied || std::time::Instant::now() >= deadline {
            assert_eq!(ran.code, Some(0), "{ran}");
            for m in &v.members {
                assert_eq!(
                    (m.checked, m.missing, m.damaged, m.repaired),
                    (want_chunks, 0, 0, 0),
                    "{}: {ran}",
                    m.member
                );
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
