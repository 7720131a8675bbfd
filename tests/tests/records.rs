//! Records on real processes (issue #13): `tetradctl record put | get | list | delete` and the
//! gRPC batch put against a local cluster of twelve nodes in four regions.
//!
//! One cluster, in order: conditional put and delete with exit code 4 and the current version;
//! the retry of a conditional put that had succeeded; 100,000 keys put in batches and listed back
//! through pages; a linearizable read after the tenant's leader is killed and returns; a sync
//! tenant's every acked record readable after its primary region is killed; and an async
//! tenant's versions after a lossy failover, none equal to any version the old epoch handed out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tetrad_ops::client::Session;
use tetrad_proto::v1::RecordPut;
use tetrad_tests::{wait_for, LocalCluster, Ran, UpOptions};

const SYNC_PRIMARY: &str = "eu-west";
const ASYNC_PRIMARY: &str = "us-east";
const BULK_KEYS: usize = 100_000;
const BATCH: usize = 10_000;

/// The version a `record put` printed ("KEY: version N in tenant T").
fn printed_version(ran: &Ran) -> u64 {
    let out = ran.expect_success();
    let v = out.split("version ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("");
    v.parse().unwrap_or_else(|_| panic!("record put prints its version: {ran}"))
}

fn put_file(cluster: &LocalCluster, tenant: &str, key: &str, value: &[u8], cond: Option<u64>) -> Ran {
    let file = cluster.scratch().join(format!("value-{}", blake3::hash(value).to_hex()));
    std::fs::write(&file, value).expect("write value file");
    let mut args = vec!["record".to_string(), "put".into(), "--tenant".into(), tenant.into(), key.into()];
    args.push(file.display().to_string());
    if let Some(n) = cond {
        args.extend(["--if-version".into(), n.to_string()]);
    }
    cluster.ctl(&args)
}

fn get(cluster: &LocalCluster, tenant: &str, key: &str) -> Ran {
    cluster.ctl(&["record", "get", "--tenant", tenant, key, "-"])
}

fn session(cluster: &LocalCluster) -> Session {
    let addrs = cluster.status().expect("status").nodes.iter().map(|n| n.api_addr.clone()).collect();
    Session::new(addrs, Duration::from_secs(60), cluster.identity())
}

/// Puts `records` in batches through the gRPC API; returns each key's acked version.
fn batch_put(
    cluster: &LocalCluster,
    rt: &tokio::runtime::Runtime,
    tenant: &str,
    records: Vec<(String, Vec<u8>)>,
) -> BTreeMap<String, u64> {
    let mut acked = BTreeMap::new();
    for chunk in records.chunks(BATCH) {
        let puts: Vec<RecordPut> =
            chunk.iter().map(|(k, v)| RecordPut { key: k.clone(), value: v.clone(), if_version: None }).collect();
        let mut s = session(cluster);
        let reply = rt
            .block_on(tetrad_ops::record::put(&mut s, tenant, puts))
            .unwrap_or_else(|e| panic!("batch put of {} records: {e}", chunk.len()));
        assert_eq!(reply.results.len(), chunk.len());
        for r in reply.results {
            acked.insert(r.key, r.version);
        }
    }
    acked
}

/// `record list --json` of `prefix`: key -> version.
fn list(cluster: &LocalCluster, tenant: &str, prefix: &str) -> BTreeMap<String, u64> {
    let ran = cluster.ctl(&["record", "list", "--tenant", tenant, "--prefix", prefix, "--json"]);
    let v: serde_json::Value = serde_json::from_str(ran.expect_success()).expect("list --json parses");
    let rows = v["records"].as_array().expect("records array");
    let keys: Vec<&str> = rows.iter().map(|r| r["key"].as_str().expect("key")).collect();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "the listing is in strict key order");
    rows.iter().map(|r| (r["key"].as_str().unwrap().to_string(), r["version"].as_u64().expect("version"))).collect()
}

fn wait_epoch(cluster: &LocalCluster, tenant: &str, above: u64) -> u64 {
    wait_for(&format!("{tenant} leaves epoch {above}"), Duration::from_secs(120), || {
        let t = cluster.tenant_show(tenant);
        if t.epoch > above && !t.leader.is_empty() {
            Ok(t.epoch)
        } else {
            Err(format!("epoch {}", t.epoch))
        }
    })
    .0
}

#[test]
fn records_keep_their_conditions_versions_and_claims_through_leader_changes_and_failovers() {
    let cluster = LocalCluster::up(UpOptions::default());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let t = "rec-sync";
    cluster.ctl(&["tenant", "create", t, "--mode", "sync", "--primary", SYNC_PRIMARY]).expect_success();
    cluster.wait_for_tenant_leader(t, Duration::from_secs(60));

    // Conditional put and delete.
    let key = "backups/2026/manifest.json";
    let v1 = printed_version(&put_file(&cluster, t, key, b"first", Some(0)));
    let refused = put_file(&cluster, t, key, b"second", Some(0));
    refused.expect_code(4);
    assert!(
        refused.stderr.contains(&format!("version {v1}")),
        "a failed condition prints the current version: {refused}"
    );
    // The same conditional put again, as after "outcome unknown": success at the version it made.
    assert_eq!(printed_version(&put_file(&cluster, t, key, b"first", Some(0))), v1, "an idempotent retry");
    let v2 = printed_version(&put_file(&cluster, t, key, b"second", Some(v1)));
    assert!(v2 > v1);
    let stale = put_file(&cluster, t, key, b"third", Some(v1));
    stale.expect_code(4);
    assert!(stale.stderr.contains(&format!("version {v2}")), "{stale}");
    let got = get(&cluster, t, key);
    assert_eq!(got.expect_success(), "second", "get with - writes only the value's bytes");
    cluster.ctl(&["record", "delete", "--tenant", t, key, "--if-version", &v1.to_string()]).expect_code(4);
    cluster.ctl(&["record", "delete", "--tenant", t, key, "--if-version", &v2.to_string()]).expect_success();
    get(&cluster, t, key).expect_code(1);
    let v3 = printed_version(&put_file(&cluster, t, key, b"first", Some(0)));
    assert!(v3 > v2, "a key put again after its delete gets a new version, never an old one");
    // Limits, checked before anything is sent.
    let long = "k".repeat(513);
    let r = put_file(&cluster, t, &long, b"v", None);
    r.expect_code(2);
    assert!(r.stderr.contains("limit of 512 bytes"), "{r}");

    // 100,000 keys in batches, listed back through pages.
    let bulk: Vec<(String, Vec<u8>)> =
        (0..BULK_KEYS).map(|i| (format!("bulk/{i:06}"), format!("value {i}").into_bytes())).collect();
    let started = std::time::Instant::now();
    let acked = batch_put(&cluster, &rt, t, bulk);
    eprintln!("put {BULK_KEYS} records in batches of {BATCH} in {:.1}s", started.elapsed().as_secs_f64());
    let listed = list(&cluster, t, "bulk/");
    assert_eq!(listed.len(), BULK_KEYS, "every key lists, through pages");
    assert_eq!(listed, acked, "each key lists at its acked version");
    assert_eq!(list(&cluster, t, "bulk/09999").len(), 10, "a prefix selects");

    // A linearizable read after a leader change: the leader dies, a write is acked by the next
    // one, the old one comes back; every read sees the new value.
    let lin = "lin/key";
    printed_version(&put_file(&cluster, t, lin, b"before", None));
    let leader = cluster.status().expect("status").tenant(t).expect("tenant").leader.clone();
    cluster.ctl(&["cluster", "kill-node", &leader]).expect_success();
    let after = printed_version(&put_file(&cluster, t, lin, b"after", None));
    cluster.ctl(&["cluster", "start-node", &leader]).expect_success();
    for _ in 0..5 {
        assert_eq!(get(&cluster, t, lin).expect_success(), "after", "no read answers the old value");
    }
    assert_eq!(list(&cluster, t, "lin/")[lin], after);

    // Sync's claim under a region kill: every acked record is readable after the failover.
    cluster.ctl(&["cluster", "kill-region", SYNC_PRIMARY]).expect_success();
    let listed = list(&cluster, t, "bulk/");
    assert_eq!(listed, acked, "sync: every acked record survives the loss of its primary region");
    assert_eq!(get(&cluster, t, key).expect_success(), "first");
    assert_eq!(get(&cluster, t, lin).expect_success(), "after");
    cluster.ctl(&["cluster", "start-region", SYNC_PRIMARY]).expect_success();
    cluster.wait_all_up_and_caught_up(t, Duration::from_secs(180));

    // Async: a lossy failover, then writes of the new epoch; no version repeats.
    let a = "rec-async";
    cluster.ctl(&["tenant", "create", a, "--mode", "async", "--primary", ASYNC_PRIMARY]).expect_success();
    cluster.wait_for_tenant_leader(a, Duration::from_secs(60));
    let old: Vec<(String, Vec<u8>)> = (0..2_000).map(|i| (format!("a/{i:04}"), b"old".to_vec())).collect();
    let mut old_versions: BTreeSet<u64> = batch_put(&cluster, &rt, a, old.clone()).into_values().collect();
    for i in 0..20 {
        let k = format!("a/{i:04}");
        old_versions.insert(printed_version(&put_file(&cluster, a, &k, format!("old {i}").as_bytes(), None)));
    }
    let epoch = cluster.tenant_show(a).epoch;
    cluster.ctl(&["cluster", "kill-region", ASYNC_PRIMARY]).expect_success();
    // Automatic failover promotes the survivors; if it has not yet, the operator forces it.
    if cluster.tenant_show(a).epoch == epoch {
        let r = cluster.ctl(&["tenant", "failover", a, "--to", "eu-central", "--accept-data-loss"]);
        eprintln!("manual failover: {r}");
    }
    let new_epoch = wait_epoch(&cluster, a, epoch);
    let renewed: Vec<(String, Vec<u8>)> = (0..2_000).map(|i| (format!("a/{i:04}"), b"new".to_vec())).collect();
    let new_versions = batch_put(&cluster, &rt, a, renewed);
    for (k, v) in &new_versions {
        assert!(!old_versions.contains(v), "{k}: version {v} of epoch {new_epoch} repeats one the old epoch acked");
        assert_eq!(v >> 40, new_epoch, "{k}: version {v} carries its epoch in the high bits");
    }
    let single = printed_version(&put_file(&cluster, a, "a/0000", b"newer", Some(new_versions["a/0000"])));
    assert!(!old_versions.contains(&single));
    // A condition taken from an old-epoch version never matches a new value.
    for v in old_versions.iter().take(50) {
        put_file(&cluster, a, "a/0001", b"stale", Some(*v)).expect_code(4);
    }
    cluster.ctl(&["cluster", "start-region", ASYNC_PRIMARY]).expect_success();
}
