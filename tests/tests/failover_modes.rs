//! Issue #4 on real processes: near-sync and async tenants fail over on their own when their
//! primary region is killed, cut off from the other regions (a UDP relay between the nodes drops
//! what crosses the region's border), frozen (SIGSTOP past the liveness period) or handed over by
//! an operator, and what the cluster serves afterwards is checked against an exact log of the
//! writers' acks, under each mode's claim (DESIGN.md, "Replication modes"):
//!
//! - near-sync (`on_lag = block`): the lost acked writes all lie within one span of at most
//!   `rpo_target`;
//! - async: every lost acked write lies inside the recorded loss window, their count is at least
//!   `lost_writes_min`, and, once the old region is back, at most `lost_writes_max`;
//! - every mode: the old epoch never acks after the new one starts acking; the old region's
//!   replicas come back as followers and list their divergent tails.
//!
//! The writers push over gRPC with the test's own client; ack times are the client's wall clock
//! when the ack arrived (the same machine's clock as the nodes'), which is later than the leader's
//! ack by the loopback delivery: comparisons allow [`DELIVERY`] for it. RTO figures are printed as
//! `metric` lines, never asserted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tetrad_ops::client::Identity;

use tetrad_proto::json::Event;
use tetrad_tests::grpc::Pusher;
use tetrad_tests::segments::{segment_bytes, segment_name};
use tetrad_tests::{metric, wait_for, wait_until, LocalCluster, UpOptions};

const PRIMARY: &str = "eu-west";
/// Room for an ack's delivery from the leader to the client on loopback.
const DELIVERY: Duration = Duration::from_millis(250);
const SEGMENT_BYTES: usize = 64 << 10;

/// One push by a writer.
#[derive(Clone, Debug)]
struct Push {
    /// The writer's index in [`Writers::start`]'s address lists.
    writer: usize,
    name: String,
    /// Wall clock (ms since the Unix epoch) when the answer arrived.
    at_ms: u64,
    at: Instant,
    /// The epoch that acked it, or the error.
    outcome: Result<u64, String>,
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis() as u64
}

/// Writers pushing segments until stopped; each keeps an exact log.
struct Writers {
    log: Arc<Mutex<Vec<Push>>>,
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

impl Writers {
    /// Starts one writer per address list; writer `w` names its segments from `w * 1_000_000`.
    fn start(tenant: &str, addr_sets: Vec<Vec<String>>, identity: Identity) -> Self {
        Self::start_with_bound(tenant, addr_sets, Duration::from_secs(20), identity)
    }

    /// As [`Writers::start`], each push given up (and logged as failed) after `bound`. A writer
    /// starts a new client after a failed push, as `archive_command` runs a new `tetradctl` for
    /// each attempt: a client stays with the node that last acked while that node answers
    /// `unavailable`, which a leader cut off from the meta group does for as long as the cut
    /// lasts, so only a new client finds the new epoch's leader.
    fn start_with_bound(tenant: &str, addr_sets: Vec<Vec<String>>, bound: Duration, identity: Identity) -> Self {
        let log: Arc<Mutex<Vec<Push>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(0));
        let mut handles = vec![];
        for (w, addrs) in addr_sets.into_iter().enumerate() {
            let (log, stop, next, tenant) = (log.clone(), stop.clone(), next.clone(), tenant.to_string());
            let identity = identity.clone();
            handles.push(std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                let mut pusher = Pusher::new(addrs.clone(), identity.clone());
                let mut n = (w as u64 + 1) * 1_000_000;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    next.fetch_add(1, Ordering::SeqCst);
                    let name = segment_name(n);
                    let bytes = segment_bytes(&format!("failover/{n}"), SEGMENT_BYTES);
                    let r = rt.block_on(pusher.push(&tenant, &name, &bytes, bound));
                    let outcome = r.map(|p| p.reply.epoch).map_err(|e| e.to_string());
                    if outcome.is_err() {
                        pusher = Pusher::new(addrs.clone(), identity.clone());
                    }
                    let push = Push { writer: w, name, at_ms: wall_ms(), at: Instant::now(), outcome };
                    log.lock().expect("log").push(push);
                }
            }));
        }
        Writers { log, stop, handles }
    }

    fn acks(&self) -> Vec<Push> {
        self.log.lock().expect("log").iter().filter(|p| p.outcome.is_ok()).cloned().collect()
    }

    fn acked_in(&self, epoch: u64) -> usize {
        self.log.lock().expect("log").iter().filter(|p| p.outcome.as_ref().is_ok_and(|e| *e == epoch)).count()
    }

    fn wait_acked_in(&self, epoch: u64, count: usize, bound: Duration) {
        wait_for(&format!("{count} writes acked in epoch {epoch}"), bound, || {
            let n = self.acked_in(epoch);
            if n >= count {
                Ok(())
            } else {
                let last = self.log.lock().expect("log").last().map(|p| format!("{:?}", p.outcome)).unwrap_or_default();
                Err(format!("{n} so far; last answer {last}"))
            }
        });
    }

    fn stop(self) -> Vec<Push> {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles {
            h.join().expect("a writer panicked");
        }
        Arc::try_unwrap(self.log).expect("writers stopped").into_inner().expect("log")
    }
}

/// The failover events of `tenant`'s history (`tenant history --json`).
fn history(cluster: &LocalCluster, tenant: &str) -> Vec<Event> {
    let ran = cluster.ctl(&["tenant", "history", tenant, "--json"]);
    serde_json::from_str(ran.expect_success()).unwrap_or_else(|e| panic!("history --json ({e}): {ran}"))
}

fn rfc3339_ms(s: Option<&str>) -> Option<u64> {
    let t = chrono::DateTime::parse_from_rfc3339(s?).ok()?;
    Some(t.timestamp_millis() as u64)
}

fn served(cluster: &LocalCluster, tenant: &str) -> BTreeSet<String> {
    cluster.list(tenant).into_iter().map(|s| s.name).collect()
}

fn create(cluster: &LocalCluster, tenant: &str, args: &[&str]) {
    let mut all = vec!["tenant", "create", tenant];
    all.extend_from_slice(args);
    cluster.ctl(&all).expect_success();
    cluster.wait_for_tenant_leader(tenant, Duration::from_secs(60));
}

fn addrs(cluster: &LocalCluster) -> Vec<String> {
    cluster.status().expect("status").nodes.iter().map(|n| n.api_addr.clone()).collect()
}

/// The event that took `tenant` out of epoch `from`, once it exists.
fn event_from(cluster: &LocalCluster, tenant: &str, from: u64, bound: Duration) -> Event {
    wait_for(&format!("{tenant} has an event out of epoch {from}"), bound, || {
        history(cluster, tenant)
            .into_iter()
            .find(|e| e.from_epoch == from && e.to_epoch > from)
            .ok_or_else(|| "none yet".to_string())
    })
    .0
}

/// Every epoch-e ack arrived before the first epoch-(e+1) ack.
fn assert_epochs_never_overlap(pushes: &[Push]) {
    let mut by_epoch: BTreeMap<u64, (Instant, Instant)> = BTreeMap::new();
    for p in pushes {
        if let Ok(e) = p.outcome {
            let r = by_epoch.entry(e).or_insert((p.at, p.at));
            r.0 = r.0.min(p.at);
            r.1 = r.1.max(p.at);
        }
    }
    let epochs: Vec<_> = by_epoch.into_iter().collect();
    for w in epochs.windows(2) {
        let ((e0, (_, last0)), (e1, (first1, _))) = (w[0], w[1]);
        assert!(
            last0 < first1,
            "epoch {e0} acked {:?} after epoch {e1} had started acking: two epochs acked at the same time",
            last0 - first1
        );
    }
}

/// The `tenant create` arguments of a drill's `mode` tenant in [`PRIMARY`].
fn mode_args(mode: &str) -> Vec<&'static str> {
    match mode {
        "near-sync" => vec!["--mode", "near-sync", "--primary", PRIMARY, "--rpo-target", "1s", "--on-lag", "block"],
        "async" => vec!["--mode", "async", "--primary", PRIMARY],
        other => panic!("the drills cover near-sync and async, not {other}"),
    }
}

/// Checks the mode's claim on what the failover recorded in `ev` lost: every acked write that
/// `tenant` no longer serves was acked by the old epoch (1), there are at least
/// `lost_writes_min` of them, and they lie within one `rpo_target` span (near-sync) or inside the
/// recorded loss window (async). Returns the lost acked writes.
fn check_claim(cluster: &LocalCluster, tenant: &str, mode: &str, ev: &Event, pushes: &[Push]) -> Vec<Push> {
    let have = served(cluster, tenant);
    let acked: Vec<&Push> = pushes.iter().filter(|p| p.outcome.is_ok()).collect();
    let lost: Vec<Push> = acked.iter().copied().filter(|p| !have.contains(&p.name)).cloned().collect();
    eprintln!(
        "{mode}: {} acked, {} lost: {:?}",
        acked.len(),
        lost.len(),
        lost.iter().map(|p| &p.name).collect::<Vec<_>>()
    );
    metric(&format!("lost_acked_writes_{}", mode.replace('-', "_")), lost.len());
    assert!(lost.iter().all(|p| p.outcome == Ok(1)), "a write acked by the new epoch is missing");
    let min = ev.lost_writes_min.expect("lost_writes_min is set at failover");
    assert!(lost.len() as u64 >= min, "{} writes lost but the record says at least {min}", lost.len());
    match mode {
        "near-sync" => {
            if let (Some(first), Some(last)) = (lost.iter().map(|p| p.at_ms).min(), lost.iter().map(|p| p.at_ms).max())
            {
                let span = Duration::from_millis(last - first);
                assert!(
                    span <= Duration::from_secs(1) + DELIVERY,
                    "near-sync lost acked writes spanning {span:?}, more than the 1 s rpo target"
                );
            }
        }
        _ => {
            let start = rfc3339_ms(ev.loss_window_start.as_deref());
            let end = rfc3339_ms(ev.loss_window_end.as_deref());
            for p in &lost {
                let (s, e) = (start.expect("a window when writes were lost"), end.expect("window end"));
                assert!(
                    p.at_ms + 1 >= s && p.at_ms <= e + DELIVERY.as_millis() as u64,
                    "lost write {} was acked at {} ms, outside the recorded window [{s}, {e}]",
                    p.name,
                    p.at_ms
                );
            }
        }
    }
    lost
}

/// Once the old primary region is back: the failover record's `lost_writes_max` is filled in
/// and bounds the loss, every lost acked write is listed in a divergent tail, and an old-region
/// node is a member (follower) of the new epoch.
fn check_old_region_rejoined(cluster: &LocalCluster, tenant: &str, mode: &str, lost: &[Push]) {
    let (ev, _) = wait_for("lost_writes_max is filled in", Duration::from_secs(60), || {
        let ev = event_from(cluster, tenant, 1, Duration::from_secs(5));
        if ev.lost_writes_max.is_none() {
            Err(format!("not yet: {ev:?}"))
        } else {
            Ok(ev)
        }
    });
    let min = ev.lost_writes_min.expect("lost_writes_min is set at failover");
    let max = ev.lost_writes_max.expect("a number");
    eprintln!("{mode}: loss {} within [{min}, {max}]", lost.len());
    assert!(lost.len() as u64 <= max, "{} acked writes lost, more than the recorded maximum {max}: {ev:?}", lost.len());
    let listed: BTreeSet<String> = ev.divergent.iter().flat_map(|t| t.writes.iter()).map(|w| w.name.clone()).collect();
    for p in lost {
        assert!(listed.contains(&p.name), "lost write {} is not in any listed divergent tail: {ev:?}", p.name);
    }
    wait_for("an old-region node follows the new epoch", Duration::from_secs(60), || {
        let info = cluster.tenant_show(tenant);
        let status = cluster.status()?;
        if info.learners.iter().chain(&info.voters).any(|m| status.region_of(m) == Some(PRIMARY)) {
            Ok(())
        } else {
            Err(format!("members: voters {:?} learners {:?}", info.voters, info.learners))
        }
    });
}

/// Kills the primary region of a `mode` tenant under two writers, checks the claim, brings the
/// region back and checks the loss record against the writers' log.
fn region_kill_drill(mode: &str) {
    let cluster = LocalCluster::up(UpOptions::default());
    let tenant = format!("drill-{mode}");
    create(&cluster, &tenant, &mode_args(mode));
    let all = addrs(&cluster);
    let writers = Writers::start(&tenant, vec![all.clone(), all], cluster.identity());
    writers.wait_acked_in(1, 40, Duration::from_secs(60));
    let killed_at = Instant::now();
    cluster.ctl(&["cluster", "kill-region", PRIMARY]).expect_success();
    eprintln!("killed {PRIMARY}, the primary region of {tenant} ({mode})");
    writers.wait_acked_in(2, 20, Duration::from_secs(60));
    let pushes = writers.stop();
    let first_new = pushes.iter().filter(|p| p.outcome == Ok(2)).map(|p| p.at).min().expect("epoch 2 acked");
    let rto = first_new - killed_at;
    eprintln!("{mode}: first ack of epoch 2 {:.2}s after the kill", rto.as_secs_f64());
    metric(&format!("rto_region_kill_{}_s", mode.replace('-', "_")), format!("{:.2}", rto.as_secs_f64()));
    assert_epochs_never_overlap(&pushes);

    let ev = event_from(&cluster, &tenant, 1, Duration::from_secs(30));
    assert_eq!(ev.kind, "failover", "{ev:?}");
    eprintln!("failover record: {ev:?}");
    let lost = check_claim(&cluster, &tenant, mode, &ev, &pushes);

    // The old region returns: its replicas rejoin as followers, list their tails, and the
    // record's maximum is filled in and bounds the loss.
    cluster.ctl(&["cluster", "start-region", PRIMARY]).expect_success();
    check_old_region_rejoined(&cluster, &tenant, mode, &lost);
}

#[test]
fn near_sync_tenant_fails_over_within_its_rpo_when_its_primary_region_dies() {
    region_kill_drill("near-sync");
}

#[test]
fn async_tenant_fails_over_and_records_its_loss_when_its_primary_region_dies() {
    region_kill_drill("async");
}

/// Cuts the primary region of a `mode` tenant off the other regions (every node-to-node datagram
/// across its border dropped by the [`tetrad_tests::wan_proxy::WanProxy`], both ways; client gRPC
/// untouched), under two writers that may use any node and one pinned to the old leader, so that
/// the old epoch is asked to ack all along. The cut lasts past the new epoch's first ack by more
/// than the liveness period; the writers go on while the cut heals. Then: the old epoch acked
/// nothing after the new one started acking, the loss obeys the mode's claim, and the old region
/// rejoins as followers with its tails listed and `lost_writes_max` filled in.
fn region_cut_drill(mode: &str) {
    const PINNED: usize = 2;
    // The liveness period (`LivenessTuning`'s default, which `cluster up` keeps).
    const LIVENESS_PERIOD: Duration = Duration::from_secs(4);
    let cluster = LocalCluster::up(UpOptions { wan_proxy: true, ..UpOptions::default() });
    let tenant = format!("cut-{mode}");
    create(&cluster, &tenant, &mode_args(mode));
    let status = cluster.status().expect("status");
    let leader = status.tenant(&tenant).expect("tenant").leader.clone();
    assert_eq!(status.region_of(&leader), Some(PRIMARY), "{tenant} leads from its primary region");
    let leader_addr = status.node(&leader).expect("leader node").api_addr.clone();
    let all = addrs(&cluster);
    // Short pushes, so that a writer held by the cut-off leader starts a new client soon.
    let writers = Writers::start_with_bound(
        &tenant,
        vec![all.clone(), all, vec![leader_addr]],
        Duration::from_secs(5),
        cluster.identity(),
    );
    writers.wait_acked_in(1, 30, Duration::from_secs(60));

    let before = cluster.wan().counts();
    let cut_at = Instant::now();
    cluster.wan().cut(PRIMARY);
    eprintln!("cut {PRIMARY} off, the primary region of {tenant} ({mode}), leader {leader}; relay so far {before:?}");
    writers.wait_acked_in(2, 10, Duration::from_secs(90));
    let first_new = writers.acks().iter().filter(|p| p.outcome == Ok(2)).map(|p| p.at).min().expect("epoch 2 acked");
    let rto = first_new - cut_at;
    eprintln!("{mode}: first ack of epoch 2 {:.2}s after the cut", rto.as_secs_f64());
    metric(&format!("rto_region_cut_{}_s", mode.replace('-', "_")), format!("{:.2}", rto.as_secs_f64()));
    // The old leader, its lease long lapsed, is asked to ack for more than a liveness period
    // after the new epoch acks (its writer's pushes end at least every 5 s).
    wait_until("the pinned writer was answered twice after a liveness period", Duration::from_secs(60), || {
        let log = writers.log.lock().expect("log");
        let after = first_new + LIVENESS_PERIOD + Duration::from_secs(1);
        log.iter().filter(|p| p.writer == PINNED && p.at > after).count() >= 2
    });
    let during = cluster.wan().counts();
    assert!(during.dropped > before.dropped, "the cut dropped nothing: {during:?}");
    assert_eq!(during.unknown_source, 0, "datagrams from no node reached the relay: {during:?}");

    let healed_at = Instant::now();
    cluster.wan().heal();
    eprintln!("healed the cut after {:.1}s; relay {during:?}", (healed_at - cut_at).as_secs_f64());
    // The writers go on while the old region hears of the new epoch: its old leader must not ack
    // in epoch 1 as soon as it can renew its liveness again.
    let ev = wait_for("lost_writes_max is filled in after the heal", Duration::from_secs(60), || {
        let ev = event_from(&cluster, &tenant, 1, Duration::from_secs(5));
        if ev.lost_writes_max.is_none() {
            Err(format!("not yet: {ev:?}"))
        } else {
            Ok(ev)
        }
    })
    .0;
    wait_until("the pinned writer is answered after the heal", Duration::from_secs(30), || {
        writers.log.lock().expect("log").iter().any(|p| p.writer == PINNED && p.at > healed_at + Duration::from_secs(1))
    });
    let pushes = writers.stop();
    let pinned: Vec<String> = pushes
        .iter()
        .filter(|p| p.writer == PINNED && p.at > first_new)
        .map(|p| format!("{} {:?}", p.name, p.outcome))
        .collect();
    eprintln!("the pinned writer after the first epoch-2 ack: {pinned:?}");
    assert_epochs_never_overlap(&pushes);

    assert_eq!(ev.kind, "failover", "{ev:?}");
    eprintln!("failover record: {ev:?}");
    let lost = check_claim(&cluster, &tenant, mode, &ev, &pushes);
    check_old_region_rejoined(&cluster, &tenant, mode, &lost);
}

#[test]
fn near_sync_tenant_fails_over_within_its_rpo_when_its_primary_region_is_cut_off() {
    region_cut_drill("near-sync");
}

#[test]
fn async_tenant_fails_over_and_records_its_loss_when_its_primary_region_is_cut_off() {
    region_cut_drill("async");
}

/// A frozen primary region (SIGSTOP past the liveness period, then SIGCONT) is failed over, and
/// its old leader, when it wakes, acks nothing: one writer is pinned to it the whole time.
#[test]
fn a_frozen_primary_region_never_acks_after_the_new_epoch_does() {
    let cluster = LocalCluster::up(UpOptions::default());
    let tenant = "frozen";
    create(&cluster, tenant, &["--mode", "async", "--primary", PRIMARY]);
    let status = cluster.status().expect("status");
    let leader = status.tenant(tenant).expect("tenant").leader.clone();
    let leader_addr = status.nodes.iter().find(|n| n.id == leader).expect("leader node").api_addr.clone();
    let all = addrs(&cluster);
    let writers = Writers::start(tenant, vec![all, vec![leader_addr]], cluster.identity());
    writers.wait_acked_in(1, 30, Duration::from_secs(60));
    let frozen: Vec<(String, u32)> = cluster
        .node_names()
        .into_iter()
        .filter(|n| status.region_of(n) == Some(PRIMARY))
        .filter_map(|n| cluster.node_pid(&n).map(|p| (n, p)))
        .collect();
    assert_eq!(frozen.len(), 3, "three nodes in {PRIMARY}: {frozen:?}");
    let signal = |sig: &str| {
        for (n, pid) in &frozen {
            let ok = std::process::Command::new("kill").args([sig, &pid.to_string()]).status().expect("kill runs");
            assert!(ok.success(), "kill {sig} {n} ({pid})");
        }
    };
    let frozen_at = Instant::now();
    signal("-STOP");
    eprintln!("froze {PRIMARY}: {frozen:?}");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        writers.wait_acked_in(2, 10, Duration::from_secs(60));
    }));
    let rto = writers.acks().iter().filter(|p| p.outcome == Ok(2)).map(|p| p.at).min().map(|t| t - frozen_at);
    signal("-CONT");
    result.unwrap_or_else(|p| std::panic::resume_unwind(p));
    if let Some(rto) = rto {
        metric("rto_region_freeze_async_s", format!("{:.2}", rto.as_secs_f64()));
    }
    // The woken old leader keeps getting the pinned writer's pushes for a while.
    std::thread::sleep(Duration::from_secs(6));
    let pushes = writers.stop();
    assert_epochs_never_overlap(&pushes);
    let ev = event_from(&cluster, tenant, 1, Duration::from_secs(10));
    let have = served(&cluster, tenant);
    let lost: Vec<&Push> = pushes.iter().filter(|p| p.outcome.is_ok() && !have.contains(&p.name)).collect();
    let (s, e) = (rfc3339_ms(ev.loss_window_start.as_deref()), rfc3339_ms(ev.loss_window_end.as_deref()));
    for p in &lost {
        let (s, e) = (s.expect("window"), e.expect("window"));
        assert!(p.at_ms + 1 >= s && p.at_ms <= e + DELIVERY.as_millis() as u64, "lost {} outside [{s}, {e}]", p.name);
    }
    eprintln!("frozen region: {} lost, record {ev:?}", lost.len());
}

/// Planned switchover loses nothing and moves the lead; manual failover refuses without the
/// flag and, with it, seals the live old epoch and records a loss that the writers' log obeys.
#[test]
fn switchover_loses_nothing_and_manual_failover_demands_the_flag() {
    let cluster = LocalCluster::up(UpOptions::default());
    create(&cluster, "moved", &["--mode", "sync", "--primary", PRIMARY]);
    let all = addrs(&cluster);
    let writers = Writers::start("moved", vec![all.clone()], cluster.identity());
    writers.wait_acked_in(1, 20, Duration::from_secs(60));
    let ran = cluster.ctl(&["tenant", "switchover", "moved", "--to", "us-east"]);
    ran.expect_success();
    let started = Instant::now();
    wait_for("the leader is in us-east", Duration::from_secs(60), || {
        let s = cluster.status()?;
        let t = s.tenant("moved").ok_or("no tenant")?;
        match s.region_of(&t.leader) {
            Some("us-east") => Ok(()),
            other => Err(format!("leader {} in {other:?}", t.leader)),
        }
    });
    metric("switchover_sync_s", format!("{:.2}", started.elapsed().as_secs_f64()));
    std::thread::sleep(Duration::from_secs(2));
    let pushes = writers.stop();
    let have = served(&cluster, "moved");
    let lost: Vec<&Push> = pushes.iter().filter(|p| p.outcome.is_ok() && !have.contains(&p.name)).collect();
    assert!(lost.is_empty(), "switchover lost acked writes: {lost:?}");
    assert!(history(&cluster, "moved").iter().any(|e| e.kind == "switchover"), "switchover not recorded");

    create(&cluster, "forced", &["--mode", "async", "--primary", PRIMARY]);
    let writers = Writers::start("forced", vec![all], cluster.identity());
    writers.wait_acked_in(1, 20, Duration::from_secs(60));
    let refused = cluster.ctl(&["tenant", "failover", "forced", "--to", "ap-south"]);
    refused.expect_code(2);
    assert!(refused.output().contains("accept-data-loss"), "the refusal names the flag: {refused}");
    let forced = cluster.ctl(&["tenant", "failover", "forced", "--to", "ap-south", "--accept-data-loss"]);
    forced.expect_success();
    eprintln!("manual failover printed:\n{}", forced.stdout);
    writers.wait_acked_in(2, 10, Duration::from_secs(60));
    let pushes = writers.stop();
    assert_epochs_never_overlap(&pushes);
    let ev = wait_for("the manual failover's maximum is filled in", Duration::from_secs(60), || {
        let ev = event_from(&cluster, "forced", 1, Duration::from_secs(5));
        if ev.lost_writes_max.is_none() {
            Err(format!("{ev:?}"))
        } else {
            Ok(ev)
        }
    })
    .0;
    assert_eq!(ev.kind, "manual-failover", "{ev:?}");
    let have = served(&cluster, "forced");
    let lost = pushes.iter().filter(|p| p.outcome.is_ok() && !have.contains(&p.name)).count() as u64;
    let (min, max) = (ev.lost_writes_min.expect("min"), ev.lost_writes_max.expect("max"));
    assert!(min <= lost && lost <= max, "manual failover lost {lost}, record says [{min}, {max}]: {ev:?}");
    let s = cluster.status().expect("status");
    let t = s.tenant("forced").expect("tenant");
    assert_eq!(s.region_of(&t.leader), Some("ap-south"), "forced tenant leads from ap-south: {t:?}");
}
