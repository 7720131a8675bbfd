//! The operator's tenant commands (`switchover`, `failover`, `set-mode`, `history`) against a
//! fake node: what reaches the cluster, what is printed, and the exit code. The command-line
//! tests run the real `tetradctl` binary against a cluster directory that points at the fake.

#[path = "support/fake_node.rs"]
mod fake_node;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use fake_node::{Act, FakeNode, TENANT};
use tetrad_ops::client::Session;
use tetrad_ops::exit::{NO_ANSWER, USAGE};
use tetrad_ops::tenant::failover::{failover, switchover};
use tetrad_ops::tenant::history::history;
use tetrad_proto::v1::{DivergentTail, TailWriteInfo, TenantEventInfo};

const LONG: Duration = Duration::from_secs(20);

/// 2023-11-14T22:13:20.000Z
const T0: u64 = 1_700_000_000_000;

fn loss_record() -> TenantEventInfo {
    TenantEventInfo {
        kind: "manual-failover".into(),
        at_ms: T0 + 5_000,
        from_epoch: 1,
        to_epoch: 2,
        lost_writes_min: Some(3),
        loss_window_start_ms: Some(T0 + 1_100),
        loss_window_end_ms: Some(T0 + 2_300),
        old_voters: vec!["eu-central-1".into(), "eu-central-2".into(), "eu-central-3".into()],
        detail: "promoted us-east-1".into(),
        ..Default::default()
    }
}

/// A cluster directory with one node, whose api address is the fake's.
fn cluster_dir(dir: &Path, api: &str) {
    let text = format!(
        "meta_voters = [\"eu-central-1\"]\n\n[[nodes]]\nid = 101\nname = \"eu-central-1\"\nregion = \"eu-central\"\n\
         raft_addr = \"127.0.0.1:1\"\napi_addr = \"{api}\"\n"
    );
    std::fs::write(dir.join("cluster.toml"), text).expect("write cluster.toml");
    // The fake answers with its own CA; tetradctl finds the admin identity where `cluster up`
    // puts it.
    fake_node::write_admin_identity(&dir.join("identities"));
}

/// Runs `tetradctl --cluster DIR --timeout 20s ARGS...`.
async fn ctl(dir: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_tetradctl"))
        .arg("--cluster")
        .arg(dir)
        .args(["--timeout", "20s"])
        .args(args)
        .env_remove("TETRAD_CLUSTER")
        .output()
        .await
        .expect("tetradctl runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn failover_without_the_flag_exits_2_and_sends_nothing() {
    let (a, a_addr) = FakeNode::start("a").await;
    let dir = tempfile::tempdir().expect("tempdir");
    cluster_dir(dir.path(), &a_addr);
    let out = ctl(dir.path(), &["tenant", "failover", TENANT, "--to", "us-east"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("without --accept-data-loss") && err.contains("Nothing was sent"), "{err}");
    assert!(out.stdout.is_empty());
    assert_eq!(a.calls("failover_tenant"), 0);

    let mut s = Session::new(vec![a_addr], LONG, fake_node::identity());
    let err = failover(&mut s, TENANT, "us-east", false).await.expect_err("refused");
    assert_eq!(err.code, USAGE);
    assert_eq!(a.calls("failover_tenant"), 0);
}

#[tokio::test]
async fn failover_with_the_flag_prints_the_loss_record() {
    let (a, a_addr) = FakeNode::start("a").await;
    a.set_failover_event(loss_record());
    let dir = tempfile::tempdir().expect("tempdir");
    cluster_dir(dir.path(), &a_addr);
    let out = ctl(dir.path(), &["tenant", "failover", TENANT, "--to", "us-east", "--accept-data-loss"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("manual-failover of tenant acme: epoch 1 -> 2\n"), "{stdout}");
    assert!(stdout.contains("at least 3 acked writes"), "{stdout}");
    assert!(stdout.contains("eu-central-1, eu-central-2, eu-central-3"), "{stdout}");
    assert!(stdout.contains("2023-11-14T22:13:21.100Z to 2023-11-14T22:13:22.300Z (1.200s)"), "{stdout}");
    let sent = a.failovers();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].name.as_str(), sent[0].to_region.as_str(), sent[0].accept_data_loss),
        (TENANT, "us-east", true)
    );

    let out = ctl(dir.path(), &["tenant", "failover", TENANT, "--to", "us-east", "--accept-data-loss", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!((v["kind"].as_str(), v["lost_writes_min"].as_u64()), (Some("manual-failover"), Some(3)));
    assert!(v["lost_writes_max"].is_null());
    assert_eq!(v["loss_window_end"], "2023-11-14T22:13:22.300Z");
}

#[tokio::test]
async fn a_failover_whose_outcome_is_open_is_not_resent_and_exits_3() {
    for act in [Act::Fail("unavailable"), Act::Fail("internal"), Act::Bare(tonic::Code::Unavailable)] {
        let (a, a_addr) = FakeNode::start("a").await;
        a.script("failover_tenant", [act.clone()]);
        let mut s = Session::new(vec![a_addr], LONG, fake_node::identity());
        let err = failover(&mut s, TENANT, "us-east", true).await.expect_err("open outcome");
        assert_eq!(err.code, NO_ANSWER, "{act:?}: {}", err.error);
        let text = err.error.to_string();
        assert!(text.contains("may or may not have happened") && text.contains("tenant history acme"), "{text}");
        assert_eq!(a.calls("failover_tenant"), 1, "{act:?}: sent once");
    }
}

#[tokio::test]
async fn a_failover_that_never_reached_a_node_is_retried_elsewhere() {
    let (b, b_addr) = FakeNode::start("b").await;
    let (a, a_addr) = FakeNode::start("a").await;
    a.always(Act::NotLeader(None));
    let mut s = Session::new(vec![fake_node::closed_addr(), a_addr, b_addr], LONG, fake_node::identity());
    let event = failover(&mut s, TENANT, "us-east", true).await.expect("done");
    assert_eq!(event.kind, "manual-failover");
    assert_eq!((a.calls("failover_tenant"), b.failovers().len()), (1, 1));
}

#[tokio::test]
async fn refused_operator_requests_exit_2() {
    let (a, a_addr) = FakeNode::start("a").await;
    let mut s = Session::new(vec![a_addr.clone()], LONG, fake_node::identity());
    let err = failover(&mut s, "nope", "us-east", true).await.expect_err("unknown tenant");
    assert_eq!(err.code, USAGE, "{}", err.error);
    a.script("switchover_tenant", [Act::Fail("bad-request")]);
    let err = switchover(&mut s, TENANT, "mars").await.expect_err("bad region");
    assert_eq!(err.code, USAGE, "{}", err.error);
    assert!(err.error.to_string().contains("refused"), "{}", err.error);
    assert_eq!(a.calls("switchover_tenant"), 1);

    let dir = tempfile::tempdir().expect("tempdir");
    cluster_dir(dir.path(), &a_addr);
    let out = ctl(dir.path(), &["tenant", "history", "nope"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = ctl(dir.path(), &["tenant", "set-mode", "nope", "--mode", "async"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[tokio::test]
async fn switchover_prints_the_event_and_history_lists_it() {
    let (a, a_addr) = FakeNode::start("a").await;
    let dir = tempfile::tempdir().expect("tempdir");
    cluster_dir(dir.path(), &a_addr);
    let out = ctl(dir.path(), &["tenant", "switchover", TENANT, "--to", "us-east"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("switchover of tenant acme: epoch 1\n"), "{stdout}");
    assert!(stdout.contains("primary moved to us-east"), "{stdout}");
    assert_eq!(a.switchovers()[0].to_region, "us-east");

    let mut s = Session::new(vec![a_addr], LONG, fake_node::identity());
    let events = history(&mut s, TENANT).await.expect("history");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "switchover");
}

#[tokio::test]
async fn history_prints_a_json_list_and_a_table() {
    let (a, a_addr) = FakeNode::start("a").await;
    let mut healed = loss_record();
    healed.lost_writes_max = Some(5);
    healed.rto_ms = Some(4_200);
    healed.divergent = vec![DivergentTail {
        node: "eu-central-2".into(),
        writes: vec![TailWriteInfo { name: "seg-7".into(), term: 3, index: 41, proposed_at_ms: T0 + 2_000 }],
    }];
    let mode_change = TenantEventInfo {
        kind: "mode-change".into(),
        at_ms: T0,
        from_epoch: 1,
        to_epoch: 1,
        detail: "sync -> async".into(),
        ..Default::default()
    };
    a.set_history(vec![mode_change, healed]);
    let dir = tempfile::tempdir().expect("tempdir");
    cluster_dir(dir.path(), &a_addr);

    let out = ctl(dir.path(), &["tenant", "history", TENANT, "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let events = v.as_array().expect("a list of events");
    assert_eq!(events.len(), 2);
    assert_eq!(
        (events[0]["kind"].as_str(), events[0]["at"].as_str()),
        (Some("mode-change"), Some("2023-11-14T22:13:20.000Z"))
    );
    assert!(events[0]["lost_writes_min"].is_null() && events[0]["loss_window_start"].is_null());
    let f = &events[1];
    assert_eq!(
        (f["lost_writes_min"].as_u64(), f["lost_writes_max"].as_u64(), f["rto_ms"].as_u64()),
        (Some(3), Some(5), Some(4_200))
    );
    assert_eq!(f["loss_window_start"], "2023-11-14T22:13:21.100Z");
    assert_eq!(f["divergent"][0]["writes"][0]["name"], "seg-7");

    let out = ctl(dir.path(), &["tenant", "history", TENANT]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("manual-failover") && stdout.contains("1 -> 2") && stdout.contains(" 3-5 "), "{stdout}");
    assert!(stdout.contains("eu-central-2: 1 write\n") && stdout.contains("seg-7 (term 3, index 41"), "{stdout}");
}

#[tokio::test]
async fn set_mode_sends_only_the_options_given() {
    let (a, a_addr) = FakeNode::start("a").await;
    let dir = tempfile::tempdir().expect("tempdir");
    cluster_dir(dir.path(), &a_addr);
    let out = ctl(
        dir.path(),
        &[
            "tenant",
            "set-mode",
            TENANT,
            "--mode",
            "near-sync",
            "--rpo-target",
            "750ms",
            "--on-lag",
            "degrade",
            "--json",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!((v["mode"].as_str(), v["rpo_target_ms"].as_u64()), (Some("near-sync"), Some(750)));
    let out = ctl(dir.path(), &["tenant", "set-mode", TENANT, "--mode", "async"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("mode       async"), "{}", text(&out.stdout));
    let sent = a.mode_changes();
    assert_eq!(sent.len(), 2);
    assert_eq!((sent[0].rpo_target_ms, sent[0].on_lag.as_deref()), (Some(750), Some("degrade")));
    assert_eq!((sent[1].mode.as_str(), sent[1].rpo_target_ms, sent[1].on_lag.as_deref()), ("async", None, None));

    let out = ctl(dir.path(), &["tenant", "set-mode", TENANT, "--mode", "near-sync", "--rpo-target", "250us"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--rpo-target"), "{}", text(&out.stderr));
    assert_eq!(a.mode_changes().len(), 2, "bad input sends nothing");
}
