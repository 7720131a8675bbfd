//! Bad input gets a clear error and changes nothing (STYLE.md, "Errors and assertions"), seen
//! from outside: real processes, the real `tetradctl`, and the exit codes PostgreSQL's
//! `archive_command` and `restore_command` act on (ops/README.md, "Exit codes").
//!
//! Each test starts one cluster and runs its steps in order; a failed step names itself.

use std::time::Duration;

use tetrad_proto::json::Segment;
use tetrad_tests::segments::{segment_bytes, segment_name, write_segment, Expected};
use tetrad_tests::{wait_for, LocalCluster, Ran, UpOptions};

const TENANT: &str = "acme";
/// `tetradctl` exits 2 for bad usage or input, unknown tenant, a conflict.
const USAGE: i32 = 2;
/// `wal fetch` exits 1 only when the cluster answered that the segment does not exist.
const FETCH_NOT_FOUND: i32 = 1;
/// `wal push` exits 3 when no node answered.
const NO_ANSWER: i32 = 3;

fn step(name: &str) {
    eprintln!("--- step: {name}");
}

fn assert_mentions(ran: &Ran, words: &[&str]) {
    let text = ran.output().to_lowercase();
    for w in words {
        assert!(text.contains(&w.to_lowercase()), "the message should mention {w:?}: {ran}");
    }
}

fn assert_unchanged(cluster: &LocalCluster, before: &[Segment], after: &str) {
    assert_eq!(cluster.list(TENANT), before, "the tenant's segments changed after {after}");
}

fn assert_all_up(cluster: &LocalCluster, after: &str) {
    let status = cluster.status().unwrap_or_else(|e| panic!("status after {after}: {e}"));
    assert_eq!(status.nodes.len(), cluster.node_names().len(), "{status:?}");
    assert!(status.down_nodes().is_empty(), "nodes down after {after}: {:?}", status.down_nodes());
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let cluster = LocalCluster::up(UpOptions::default());
    cluster.create_sync_tenant(TENANT, "eu-central");
    let name = segment_name(1);
    let original = segment_bytes("bad_input/original", 64 << 10);
    let file = write_segment(&cluster.scratch().join("a"), &name, &original);
    let ran = cluster.push(TENANT, &file);
    assert!(ran.success() && ran.stdout.contains("stored"), "{ran}");
    let before = cluster.list(TENANT);
    assert_eq!(before.len(), 1, "{before:?}");

    step("a missing file: exit 2 naming the file, nothing stored");
    let missing = cluster.scratch().join("a").join(segment_name(2));
    let ran = cluster.push(TENANT, &missing);
    ran.expect_code(USAGE);
    assert_mentions(&ran, &[&missing.display().to_string()]);
    assert_unchanged(&cluster, &before, "pushing a missing file");

    step("an unknown tenant: exit 2 naming it, nothing created");
    let ran = cluster.push("nosuch", &file);
    ran.expect_code(USAGE);
    assert_mentions(&ran, &["nosuch", "does not exist"]);
    let tenants = cluster.ctl(&["tenant", "list", "--json"]);
    assert!(!tenants.expect_success().contains("nosuch"), "a push to an unknown tenant created it: {tenants}");
    assert_unchanged(&cluster, &before, "pushing to an unknown tenant");

    step("the same name with other bytes: exit 2 saying it differs, the original kept");
    let other = segment_bytes("bad_input/other", 64 << 10);
    let conflicting = write_segment(&cluster.scratch().join("b"), &name, &other);
    let ran = cluster.push(TENANT, &conflicting);
    ran.expect_code(USAGE);
    assert_mentions(&ran, &[&name, "differ"]);
    assert_unchanged(&cluster, &before, "a conflicting push");
    cluster.fetch_and_check(TENANT, &Expected::of(&name, &original));

    step("the same name with the same bytes: exit 0, already present");
    let ran = cluster.push(TENANT, &file);
    assert!(ran.success() && ran.stdout.contains("already present"), "{ran}");
    assert_unchanged(&cluster, &before, "an identical re-push");

    step("fetching a segment that does not exist: exit 1, no file written");
    let dest = cluster.scratch().join("fetched-missing");
    let ran = cluster.fetch(TENANT, &segment_name(3), &dest);
    ran.expect_code(FETCH_NOT_FOUND);
    assert!(!dest.exists(), "a failed fetch left {}", dest.display());

    step("fetching from an unknown tenant: exit 2");
    cluster.fetch("nosuch", &name, &dest).expect_code(USAGE);

    step("a node config with a typo: check-config and run exit 2 naming the key");
    let config = std::fs::read_to_string(cluster.node_config("eu-central-1")).expect("node.toml");
    for (key, typo) in [("data_dir", "data_dri"), ("heartbeat_interval_ms", "heartbeat_intreval_ms")] {
        assert!(config.contains(key), "node.toml has no {key}:\n{config}");
        let bad = cluster.scratch().join(format!("typo-{typo}.toml"));
        std::fs::write(&bad, config.replacen(key, typo, 1)).expect("write the bad config");
        for verb in ["check-config", "run"] {
            let ran = cluster.tetrad(&[verb.as_ref(), "--config".as_ref(), bad.as_os_str()], Duration::from_secs(30));
            ran.expect_code(USAGE);
            assert_mentions(&ran, &[typo]);
        }
    }
    assert_all_up(&cluster, "running a node with a bad config");

    step("a second `cluster up` on the running cluster: exit 2, already running");
    let ran = cluster.ctl(&["cluster", "up", "--local"]);
    ran.expect_code(USAGE);
    assert_mentions(&ran, &["already running"]);
    assert_all_up(&cluster, "a second cluster up");
    assert_unchanged(&cluster, &before, "a second cluster up");
    cluster.fetch_and_check(TENANT, &Expected::of(&name, &original));

    step("the whole cluster down: fetch exits above 125 (PostgreSQL aborts recovery), push exits 3");
    cluster.ctl(&["cluster", "down"]).expect_success();
    let ran = cluster.ctl(&[
        "--timeout".as_ref(),
        "5s".as_ref(),
        "wal".as_ref(),
        "fetch".as_ref(),
        "--tenant".as_ref(),
        TENANT.as_ref(),
        name.as_ref(),
        dest.as_os_str(),
    ]);
    assert!(ran.code.is_some_and(|c| c > 125), "a fetch from an unreachable cluster must exit above 125: {ran}");
    assert!(!dest.exists(), "a failed fetch left {}", dest.display());
    let ran = cluster.ctl(&[
        "--timeout".as_ref(),
        "5s".as_ref(),
        "wal".as_ref(),
        "push".as_ref(),
        "--tenant".as_ref(),
        TENANT.as_ref(),
        file.as_os_str(),
    ]);
    ran.expect_code(NO_ANSWER);

    step("a fetch with no cluster directory at all also exits above 125");
    let nowhere = cluster.scratch().join("no-cluster-here");
    let ran = tetrad_tests::run_bounded(
        std::process::Command::new(&cluster.bins().tetradctl)
            .arg("--cluster")
            .arg(&nowhere)
            .args(["wal", "fetch", "--tenant", TENANT, &name])
            .arg(&dest)
            .env_remove("TETRAD_CLUSTER"),
        Duration::from_secs(60),
    );
    assert!(ran.code.is_some_and(|c| c > 125), "{ran}");
}

/// A node whose data directory was wiped must not come back under its old identity (DESIGN.md,
/// "Storage identity"): started as it is, it refuses to run; initialised again (a new storage
/// incarnation under the old name), the cluster refuses it, and says so.
#[test]
fn a_wiped_node_gets_a_clear_error_and_cannot_rejoin_under_its_old_identity() {
    const NODE: &str = "us-east-3";
    let cluster = LocalCluster::up(UpOptions::default());
    cluster.create_sync_tenant(TENANT, "eu-west");
    let mut segments = Vec::new();
    for n in 1..=5 {
        let name = segment_name(n);
        let bytes = segment_bytes(&format!("wiped/{n}"), 256 << 10);
        let ran = cluster.push(TENANT, &write_segment(&cluster.scratch().join("w"), &name, &bytes));
        assert!(ran.success(), "{ran}");
        segments.push(Expected::of(&name, &bytes));
    }

    step("kill the node and wipe its data directory");
    cluster.ctl(&["cluster", "kill-node", NODE]).expect_success();
    // Until its last liveness renewal expires, status still counts the old incarnation as up.
    wait_for(&format!("status shows {NODE} down"), Duration::from_secs(60), || {
        let status = cluster.status()?;
        match status.node(NODE) {
            Some(n) if !n.up => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let data = cluster.node_dir(NODE).join("data");
    std::fs::remove_dir_all(&data).unwrap_or_else(|e| panic!("cannot wipe {}: {e}", data.display()));

    step("starting it on the wiped directory fails, saying the directory holds no store");
    let ran = cluster.ctl(&["cluster", "start-node", NODE]);
    assert!(!ran.success(), "start-node on a wiped data directory succeeded: {ran}");
    assert_mentions(&ran, &["holds no tetrad store"]);
    let config = cluster.node_config(NODE);
    let ran = cluster.tetrad(&["run".as_ref(), "--config".as_ref(), config.as_os_str()], Duration::from_secs(60));
    ran.expect_code(USAGE);
    assert_mentions(&ran, &[&data.display().to_string(), "holds no tetrad store", "wiped"]);
    let created = std::fs::read_dir(&data).map(|mut d| d.next().is_some()).unwrap_or(false);
    assert!(!created, "a start that failed left files in the wiped {}", data.display());
    check_serving(&cluster, &segments);

    step("a new incarnation under the old identity: init succeeds, but the cluster refuses the node");
    let ran = cluster.tetrad(&["init".as_ref(), "--config".as_ref(), config.as_os_str()], Duration::from_secs(60));
    assert!(ran.success() && ran.stdout.contains("incarnation"), "{ran}");
    let log_before = cluster.node_log(NODE).len();
    cluster.ctl(&["cluster", "start-node", NODE]).expect_success();
    // The node renews its liveness every second and a renewal counts for four (the defaults), so
    // a node accepted under its old identity would show up within a few seconds. Watch status
    // for three liveness periods plus slack: the node must never be up.
    let watch = Duration::from_secs(15);
    let watched = std::time::Instant::now();
    let mut polls = 0;
    while watched.elapsed() < watch {
        let status = cluster.status().expect("status");
        let node = status.node(NODE).expect("the node is listed");
        assert!(!node.up, "{NODE}, wiped and initialised again, is up under its old identity: {node:?}");
        polls += 1;
        std::thread::sleep(tetrad_tests::POLL_INTERVAL);
    }
    eprintln!("{NODE} stayed down for {polls} status polls over {watch:?}");
    check_serving(&cluster, &segments);

    step("the refused node's log says why");
    wait_for(
        &format!("{NODE}'s node.log says the meta group refuses it, or that its incarnation was refused"),
        Duration::from_secs(30),
        || {
            let log = cluster.node_log(NODE);
            let new = log.get(log_before..).unwrap_or("");
            let says_why = new
                .lines()
                .any(|l| l.contains("refuses this node") || (l.contains("incarnation") && l.contains("refused")));
            if says_why {
                Ok(())
            } else {
                Err(format!("its log since the start:\n{new}"))
            }
        },
    );
}

/// The tenant still serves every segment and takes a new one.
fn check_serving(cluster: &LocalCluster, segments: &[Expected]) {
    for want in segments {
        cluster.fetch_and_check(TENANT, want);
    }
    let name = format!("{}.partial", segment_name(100 + cluster.list(TENANT).len() as u64));
    let ran = cluster.push(TENANT, &write_segment(&cluster.scratch().join("serving"), &name, b"still serving"));
    assert!(ran.success(), "{ran}");
}
