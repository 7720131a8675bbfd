//! `cluster start-* / kill-* / down` and `up`'s refusals, with a fake `tetrad` binary (a shell
//! script that waits to be signalled) and a fake node answering the API probes.

#[path = "support/fake_node.rs"]
mod fake_node;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fake_node::FakeNode;
use tetrad_config::certs::{CaBundle, NodeCert};
use tetrad_ops::cluster_dir::{self, ClusterFile, Layout};
use tetrad_ops::exit::USAGE;
use tetrad_ops::local_cluster::{self, NodeAction, Target, UpArgs};
use tetrad_ops::ports::pick_free_ports;
use tetrad_ops::process::{self, Stopped};
use tetrad_ops::tuning::Tuning;

const TIMEOUT: Duration = Duration::from_secs(20);

/// `init` succeeds; `run` prints and waits until SIGTERM (handled between one-second sleeps).
const FAKE_TETRAD: &str = "#!/bin/sh\n\
case \"$1\" in\n\
  init) echo \"fake init $3\"; exit 0 ;;\n\
  run) echo \"fake run $3\"; trap 'echo fake term; exit 0' TERM; while :; do sleep 1; done ;;\n\
esac\n\
exit 9\n";

fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// A one-node-per-region cluster directory whose nodes' api addresses all point at `api`.
fn cluster_dir(root: PathBuf, api: &str) -> (Layout, ClusterFile) {
    let layout = Layout::new(root);
    let mut ports = pick_free_ports(4).expect("ports");
    for p in &mut ports {
        p.api_addr = api.parse().expect("addr");
    }
    let plan = cluster_dir::plan_local(&layout, 1, &Tuning::default(), &ports).expect("plan");
    let ca = CaBundle::generate("test").expect("ca");
    let certs: Vec<NodeCert> =
        plan.configs.iter().map(|c| ca.issue_node(&c.name, c.me().id, &c.me().region).expect("cert")).collect();
    cluster_dir::write_local(&layout, &plan, &ca, &certs).expect("write");
    // The fakes answer with their own CA; tetradctl finds the admin identity where `cluster up`
    // would have put it.
    fake_node::write_admin_identity(&layout.identities_dir());
    (layout, plan.cluster)
}

/// The session id of a process, from /proc/PID/stat (the field after pgrp).
fn session_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.split(' ').nth(3)?.parse().ok()
}

fn started_pid(report: &[(String, NodeAction)], name: &str) -> u32 {
    match report.iter().find(|(n, _)| n == name) {
        Some((_, NodeAction::Started { pid })) => *pid,
        other => panic!("expected {name} started, got {other:?}"),
    }
}

#[tokio::test]
async fn nodes_start_detached_are_killed_stopped_and_purged() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = script(tmp.path(), "fake-tetrad", FAKE_TETRAD);
    let (_fake, api) = FakeNode::start("fake").await;
    let (layout, cluster) = cluster_dir(tmp.path().join("cluster"), &api);

    let report =
        local_cluster::start(&layout, &cluster, Target::Region("eu-west"), &bin, TIMEOUT).await.expect("started");
    let pid = started_pid(&report, "eu-west-1");
    assert_eq!(report.len(), 1);
    assert_eq!(process::running_pid(&layout, "eu-west-1"), Some(pid));
    assert_eq!(session_of(pid), Some(pid), "the node leads its own session");
    assert_ne!(session_of(std::process::id()), Some(pid));

    let again = local_cluster::start(&layout, &cluster, Target::Node("eu-west-1"), &bin, TIMEOUT).await.expect("no-op");
    assert_eq!(again, [("eu-west-1".to_owned(), NodeAction::AlreadyRunning { pid })]);

    let args = UpArgs { nodes_per_region: 1, tuning: None, force: true };
    let err = local_cluster::up(&layout, &args, TIMEOUT).await.expect_err("refused");
    assert_eq!(err.code, USAGE);
    let text = err.error.to_string();
    assert!(
        text.contains("a cluster is already running in") && text.contains("`tetradctl cluster down` first"),
        "{text}"
    );

    let killed = local_cluster::kill(&layout, &cluster, Target::Region("eu-west")).expect("killed");
    assert_eq!(killed, [("eu-west-1".to_owned(), NodeAction::Stopped { pid, how: Stopped::Killed })]);
    assert_eq!(process::running_pid(&layout, "eu-west-1"), None);
    let again = local_cluster::kill(&layout, &cluster, Target::Node("eu-west-1")).expect("no-op");
    assert_eq!(again, [("eu-west-1".to_owned(), NodeAction::NotRunning)]);

    let report =
        local_cluster::start(&layout, &cluster, Target::Node("us-east-1"), &bin, TIMEOUT).await.expect("started");
    let us_pid = started_pid(&report, "us-east-1");
    // The API answered (the fake node) before the script wrote its first line, so wait for it.
    let want = format!("fake run {}", layout.node_config("us-east-1").display());
    let logged = process::wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(layout.log("us-east-1")).is_ok_and(|log| log.contains(&want))
    });
    assert!(logged, "node.log gets the node's output");

    let down = local_cluster::down(&layout, false, Duration::from_secs(10)).expect("down");
    let us = down.iter().find(|(n, _)| n == "us-east-1").expect("reported");
    assert_eq!(us.1, NodeAction::Stopped { pid: us_pid, how: Stopped::Terminated });
    assert_eq!(down.iter().filter(|(_, a)| *a == NodeAction::NotRunning).count(), 3);
    assert!(layout.cluster_file().exists(), "down keeps the directory");
    let log = std::fs::read_to_string(layout.log("us-east-1")).expect("log");
    assert!(log.contains("fake term"), "SIGTERM reached the node: {log}");

    let args = UpArgs { nodes_per_region: 1, tuning: None, force: false };
    let err = local_cluster::up(&layout, &args, TIMEOUT).await.expect_err("refused");
    assert_eq!(err.code, USAGE);
    assert!(err.error.to_string().contains("--force"), "{}", err.error);

    local_cluster::down(&layout, true, Duration::from_secs(10)).expect("purged");
    assert!(!layout.root.exists());
}

#[tokio::test]
async fn unknown_regions_and_nodes_exit_2_with_the_valid_names() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = script(tmp.path(), "fake-tetrad", FAKE_TETRAD);
    let (layout, cluster) = cluster_dir(tmp.path().join("cluster"), "127.0.0.1:9");
    let err =
        local_cluster::start(&layout, &cluster, Target::Region("mars"), &bin, TIMEOUT).await.expect_err("unknown");
    assert_eq!(err.code, USAGE);
    assert!(err.error.to_string().contains("regions: eu-central, eu-west, us-east, ap-south"), "{}", err.error);
    let err = local_cluster::kill(&layout, &cluster, Target::Node("eu-west-9")).expect_err("unknown");
    assert_eq!(err.code, USAGE);
    assert!(err.error.to_string().contains("nodes: eu-central-1, eu-west-1, us-east-1, ap-south-1"), "{}", err.error);
}

#[test]
fn a_pid_file_naming_another_program_is_never_trusted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (layout, _) = cluster_dir(tmp.path().join("cluster"), "127.0.0.1:9");
    // This test process is alive but is not the node: signalling it would be a disaster.
    for text in [format!("{}\n", std::process::id()), "0".into(), "-1".into(), "1".into(), "garbage".into()] {
        std::fs::write(layout.pid("eu-west-1"), &text).expect("write pid");
        assert_eq!(process::running_pid(&layout, "eu-west-1"), None, "{text:?}");
    }
}

#[test]
fn init_must_exit_0_and_its_failure_shows_the_log() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (layout, _) = cluster_dir(tmp.path().join("cluster"), "127.0.0.1:9");
    let good = script(tmp.path(), "good", FAKE_TETRAD);
    process::run_init(&good, &layout, "eu-west-1").expect("init ok");
    let bad = script(tmp.path(), "bad", "#!/bin/sh\necho 'cannot open store: disk on fire' >&2\nexit 4\n");
    let err = process::run_init(&bad, &layout, "eu-west-1").expect_err("init fails").to_string();
    assert!(err.contains("exit status: 4") && err.contains("disk on fire"), "{err}");
}

#[tokio::test]
async fn up_refuses_a_directory_that_is_not_a_cluster_even_with_force() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("thesis.tex"), "precious").expect("write");
    let layout = Layout::new(tmp.path().to_path_buf());
    let args = UpArgs { nodes_per_region: 1, tuning: None, force: true };
    let err = local_cluster::up(&layout, &args, TIMEOUT).await.expect_err("refused");
    assert_eq!(err.code, USAGE);
    assert!(tmp.path().join("thesis.tex").exists());
}
