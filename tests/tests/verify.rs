//! `tetradctl verify` (issue #12) against a real local cluster: a healthy tenant verifies whole
//! with counts that match its catalog; a chunk file deleted on one member and one flipped on
//! another are reported and repaired (a second verify is clean); a stopped member is reported
//! unreachable with exit code 4.
//!
//! Chunk files live at `data/chunks/<tenant>/<first 2 hex digits>/<blake3 hex>` on each node
//! (node/src/storage/chunks.rs), one chunk per MiB of a segment.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use tetrad_proto::json::{Verify, VerifyMember};
use tetrad_tests::segments::{blake3_hex, segment_bytes, segment_name};
use tetrad_tests::{LocalCluster, UpOptions};

const TENANT: &str = "verified";
const PRIMARY: &str = "eu-west";
const CHUNK: usize = 1 << 20;
/// The exit code of a verification that found a member unreachable or a chunk unrepaired.
const VERIFY_FAILED: i32 = 4;

fn verify(cluster: &LocalCluster) -> (Option<i32>, Verify, String) {
    let ran = cluster.ctl(&["verify", "--tenant", TENANT, "--json"]);
    let v: Verify = serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("verify --json ({e}): {ran}"));
    (ran.code, v, ran.to_string())
}

fn member<'a>(v: &'a Verify, name: &str) -> &'a VerifyMember {
    v.members.iter().find(|m| m.member == name).unwrap_or_else(|| panic!("{name} is not in {v:?}"))
}

#[test]
fn verify_reports_repairs_and_finds_unreachable_members() {
    let cluster = LocalCluster::up(UpOptions::default());
    cluster.create_sync_tenant(TENANT, PRIMARY);
    cluster.wait_for_tenant_leader(TENANT, Duration::from_secs(60));

    // Segments of one to three chunks; the catalog references each distinct chunk.
    let mut chunks: BTreeSet<String> = BTreeSet::new();
    let mut chunk_bytes = 0u64;
    let mut small = vec![];
    let dir = cluster.scratch().join("segments");
    std::fs::create_dir_all(&dir).unwrap();
    for n in 1..=8u64 {
        let size = [1000, 40_000, CHUNK, CHUNK + 5, 2 * CHUNK + 777, 300, 9000, 3 * CHUNK / 2][n as usize - 1];
        let name = segment_name(n);
        let bytes = segment_bytes(&format!("verify/{n}"), size);
        for c in bytes.chunks(CHUNK) {
            if chunks.insert(blake3_hex(c)) {
                chunk_bytes += c.len() as u64;
            }
        }
        if size <= CHUNK {
            small.push(blake3_hex(&bytes));
        }
        let path = dir.join(&name);
        std::fs::write(&path, &bytes).unwrap();
        cluster.push(TENANT, &path).expect_success();
    }
    cluster.wait_all_up_and_caught_up(TENANT, Duration::from_secs(120));
    let info = cluster.tenant_show(TENANT);
    let members: Vec<String> = info.voters.iter().chain(info.learners.iter()).cloned().collect();

    // Healthy: every member checks every chunk, all intact. A member verifies the chunks its own
    // applied catalog references, and "caught up" above is the leader's matched index, so a
    // member may not have applied the last puts yet (seen once under a loaded full run: one member
    // checked 0): ask again until every member's catalog holds them, for a bounded time.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (code, v, ran) = loop {
        let (code, v, ran) = verify(&cluster);
        let all_applied = v.members.iter().all(|m| m.checked == chunks.len() as u64);
        if all_applied || std::time::Instant::now() >= deadline {
            break (code, v, ran);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(code, Some(0), "{ran}");
    assert!(v.ok, "{ran}");
    assert_eq!(v.members.len(), members.len(), "{ran}");
    for m in &members {
        let got = member(&v, m);
        let want = VerifyMember {
            member: m.clone(),
            reachable: true,
            error: None,
            checked: chunks.len() as u64,
            bytes: chunk_bytes,
            missing: 0,
            damaged: 0,
            repaired: 0,
            unrepaired: 0,
        };
        assert_eq!(got, &want, "{ran}");
    }

    // Damage: a chunk deleted on one member, another flipped on a second.
    let chunk_file = |node: &str, h: &str| -> PathBuf {
        cluster.node_dir(node).join("data").join("chunks").join(TENANT).join(&h[..2]).join(h)
    };
    let (a, b) = (&members[0], &members[1]);
    let deleted = chunk_file(a, &small[0]);
    std::fs::remove_file(&deleted).unwrap_or_else(|e| panic!("{}: {e}", deleted.display()));
    let flipped = chunk_file(b, &small[1]);
    let mut bytes = std::fs::read(&flipped).unwrap_or_else(|e| panic!("{}: {e}", flipped.display()));
    bytes[100] ^= 0x40;
    std::fs::write(&flipped, &bytes).unwrap();

    let (code, v, ran) = verify(&cluster);
    assert_eq!(code, Some(0), "repaired damage leaves the tenant whole: {ran}");
    // The background scrub (a pass every 30 s) may have repaired one first; then the node's
    // log says so.
    let (ma, mb) = (member(&v, a), member(&v, b));
    if ma.missing == 0 {
        assert!(cluster.node_log(a).contains("scrub repaired a chunk"), "{a}'s deleted chunk was not reported: {ran}");
    } else {
        assert_eq!((ma.missing, ma.damaged, ma.repaired, ma.unrepaired), (1, 0, 1, 0), "{ran}");
    }
    if mb.damaged == 0 {
        assert!(cluster.node_log(b).contains("scrub repaired a chunk"), "{b}'s flipped chunk was not reported: {ran}");
    } else {
        assert_eq!((mb.missing, mb.damaged, mb.repaired, mb.unrepaired), (0, 1, 1, 0), "{ran}");
    }
    for m in &members[2..] {
        let c = member(&v, m);
        assert_eq!((c.missing, c.damaged, c.repaired, c.checked), (0, 0, 0, chunks.len() as u64), "{ran}");
    }
    for (path, h) in [(&deleted, &small[0]), (&flipped, &small[1])] {
        let back = std::fs::read(path).unwrap_or_else(|e| panic!("{} not repaired: {e}", path.display()));
        assert_eq!(&blake3_hex(&back), h, "{} holds other bytes after the repair", path.display());
    }
    let (code, v, ran) = verify(&cluster);
    assert_eq!(code, Some(0), "{ran}");
    for m in &v.members {
        assert_eq!((m.missing, m.damaged, m.repaired, m.bytes), (0, 0, 0, chunk_bytes), "second verify: {ran}");
    }

    // A stopped member is unreachable: exit 4, the others still verified.
    let leader = cluster.status().unwrap().tenant(TENANT).unwrap().leader.clone();
    let victim = members.iter().find(|m| **m != leader).unwrap().clone();
    cluster.ctl(&["cluster", "kill-node", &victim]).expect_success();
    let (code, v, ran) = verify(&cluster);
    assert_eq!(code, Some(VERIFY_FAILED), "{ran}");
    assert!(!v.ok, "{ran}");
    let dead = member(&v, &victim);
    assert!(!dead.reachable && dead.error.is_some(), "{ran}");
    for m in v.members.iter().filter(|m| m.member != victim) {
        assert!(m.reachable && m.checked == chunks.len() as u64 && m.unrepaired == 0, "{ran}");
    }
    cluster.ctl(&["cluster", "start-node", &victim]).expect_success();
}
