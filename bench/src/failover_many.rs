//! `failover-many --tenants N`: many tenants failing over at once (issue #14). One local cluster
//! (`rto::Cluster`), N tenants with primary `eu-west` in mixed modes (sync, near-sync, async in
//! turn), created `CREATE_IN_FLIGHT` at a time over gRPC (also timed: `create-tenants` prints only
//! that); a writer on a sample of them; then `cluster kill-region eu-west`.
//!
//! Two RTOs per tenant, both from just before the kill command:
//! - `seen`: every tenant whose leader was in the killed region, until a surviving node's `Status`
//!   shows it failed over: a new epoch (near-sync, async: the failover controller's promotion) or,
//!   for sync, a later term led from another region. Status is polled every [`POLL`], so this is
//!   coarse by one poll plus one status call.
//! - `acked`: the sampled tenants, until their writer's first ack from the new leader
//!   (`rto::first_recovered`, as `rto` measures it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use tetrad_ops::client::Identity;
use tetrad_proto::v1::tetrad_client::TetradClient;
use tetrad_proto::v1::{CreateTenantRequest, StatusReply, StatusRequest};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tonic::transport::Channel;

use crate::rto::{first_recovered, Ack, Cluster, Mode};
use tetrad_tests::grpc::Pusher;

/// The region every tenant starts in, and the one killed.
const PRIMARY: &str = "eu-west";
/// Tenant creations in flight at once.
const CREATE_IN_FLIGHT: usize = 8;
/// Attempts per creation, 500 ms apart (right after start-up, creations are refused until the
/// meta group has a leader and knows the nodes' liveness).
const CREATE_ATTEMPTS: u32 = 60;
/// Acks each sampled writer must have before the kill.
const ACKS_BEFORE_KILL: usize = 5;
/// Bound on the warm-up: every writer acking, every tenant led from the primary region.
const WARM_UP_BOUND: Duration = Duration::from_secs(180);
/// Bound on waiting for every tenant to fail over; far past every target, so slowness is measured.
const RECOVERY_BOUND: Duration = Duration::from_secs(180);
/// Bound on one status call (the node answers within its own deadline of 3 s).
const STATUS_CALL: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(200);
/// Lower than the test client's 1 s, as in `rto`: it bounds how late a writer notices.
const MAX_BACKOFF: Duration = Duration::from_millis(250);
const PUSH_BOUND: Duration = Duration::from_secs(30);
const SEGMENT_BYTES: usize = 16 << 10;

const MODES: [Mode; 3] = [Mode::Sync, Mode::NearSync, Mode::Async];

/// What `failover-many` and `create-tenants` are asked to do.
pub struct ManyArgs {
    pub ctl: PathBuf,
    pub tenants: usize,
    /// How many of the tenants get a writer (spread over them evenly).
    pub writers: usize,
    pub tuning: Option<PathBuf>,
    /// Where the nodes' logs are copied before the teardown.
    pub keep_logs: Option<PathBuf>,
    pub json: bool,
}

/// The one place that dials a node's gRPC API, with the cluster's admin identity.
async fn dial(addr: &str, identity: &Identity) -> Result<TetradClient<Channel>> {
    let endpoint = tetrad_ops::client::endpoint(addr, identity).map_err(anyhow::Error::msg)?;
    let channel = endpoint.connect().await.with_context(|| format!("cannot connect to {addr}"))?;
    Ok(TetradClient::new(channel))
}

fn tenant_name(i: usize) -> (String, Mode) {
    let mode = MODES[i % MODES.len()];
    (format!("many-{}-{i}", mode.name()), mode)
}

/// Creates tenants `0..n`, [`CREATE_IN_FLIGHT`] at a time; returns how long it took.
async fn create_tenants(addrs: &[String], identity: &Identity, n: usize) -> Result<Duration> {
    let started = Instant::now();
    let next = Arc::new(Mutex::new(0usize));
    let mut tasks = Vec::new();
    for w in 0..CREATE_IN_FLIGHT.min(n) {
        let (next, addr, identity) = (next.clone(), addrs[w % addrs.len()].clone(), identity.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = dial(&addr, &identity).await?;
            loop {
                let i = {
                    let mut g = next.lock().expect("tenant counter");
                    let i = *g;
                    *g += 1;
                    i
                };
                if i >= n {
                    return Ok::<(), anyhow::Error>(());
                }
                let (name, mode) = tenant_name(i);
                let req = CreateTenantRequest {
                    name: name.clone(),
                    mode: mode.name().into(),
                    primary: PRIMARY.into(),
                    rpo_target_ms: if mode == Mode::NearSync { 1000 } else { 0 },
                    ..Default::default()
                };
                let mut attempt = 1;
                while let Err(e) = client.create_tenant(req.clone()).await {
                    if attempt >= CREATE_ATTEMPTS {
                        bail!("cannot create {name}: {e}");
                    }
                    attempt += 1;
                    sleep(Duration::from_millis(500)).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed())
}

/// One writer pushing small segments back to back until dropped.
struct Writer {
    tenant: usize,
    acks: Arc<Mutex<Vec<Ack>>>,
    task: JoinHandle<()>,
}

impl Writer {
    fn start(addrs: Vec<String>, identity: Identity, tenant: usize) -> Self {
        let acks: Arc<Mutex<Vec<Ack>>> = Arc::default();
        let log = acks.clone();
        let name = tenant_name(tenant).0;
        let task = tokio::spawn(async move {
            let pusher = Pusher::new(addrs, identity).with_max_backoff(MAX_BACKOFF);
            let bytes = vec![0x5a; SEGMENT_BYTES];
            for n in 1u64.. {
                let segment = format!("{:08X}{:08X}{:08X}", 1, n / 256, n % 256);
                if let Ok(pushed) = pusher.push(&name, &segment, &bytes, PUSH_BOUND).await {
                    let ack = Ack { at: Instant::now(), epoch: pushed.reply.epoch, term: pushed.reply.term };
                    log.lock().expect("ack log").push(ack);
                }
            }
        });
        Writer { tenant, acks, task }
    }

    fn acks(&self) -> Vec<Ack> {
        self.acks.lock().expect("ack log").clone()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `Status` from the first of `addrs` that answers.
async fn status(addrs: &[String], identity: &Identity) -> Result<StatusReply> {
    let mut last = String::from("no node asked");
    for addr in addrs {
        let call = async { dial(addr, identity).await?.status(StatusRequest {}).await.map_err(anyhow::Error::from) };
        match timeout(STATUS_CALL, call).await {
            Ok(Ok(r)) => return Ok(r.into_inner()),
            Ok(Err(e)) => last = format!("{addr}: {e:#}"),
            Err(_) => last = format!("{addr}: no status within {STATUS_CALL:?}"),
        }
    }
    bail!("no status: {last}")
}

/// Per tenant name: (epoch, term, leader's region) in a status reply.
fn tenant_views(st: &StatusReply) -> BTreeMap<String, (u64, u64, String)> {
    let region: BTreeMap<&str, &str> = st.nodes.iter().map(|n| (n.id.as_str(), n.region.as_str())).collect();
    st.tenants
        .iter()
        .map(|t| (t.name.clone(), (t.epoch, t.term, region.get(t.leader.as_str()).unwrap_or(&"").to_string())))
        .collect()
}

fn histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 3_600_000, 3)?)
}

fn summary(h: &Histogram<u64>) -> serde_json::Value {
    if h.is_empty() {
        return serde_json::json!({ "n": 0 });
    }
    serde_json::json!({
        "n": h.len(), "p50_ms": h.value_at_quantile(0.5), "p99_ms": h.value_at_quantile(0.99), "max_ms": h.max(),
    })
}

fn line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "n=0".into();
    }
    format!(
        "n={} p50={:.2}s p99={:.2}s max={:.2}s",
        h.len(),
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    )
}

fn cluster_dir(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tetrad-bench-{what}-{}", std::process::id()))
}

/// `create-tenants --tenants N`: tenants created per second on a fresh local cluster.
pub async fn create_only(args: ManyArgs) -> Result<()> {
    let dir = cluster_dir("create");
    let _cluster = Cluster::up(&args.ctl, dir.clone(), args.tuning.as_deref(), None).await?;
    let addrs = tetrad_ops::cluster_dir::ClusterFile::load(&dir)?.api_addrs();
    let identity = Identity::load(&Identity::default_path(&dir))?;
    let took = create_tenants(&addrs, &identity, args.tenants).await?;
    let per_s = args.tenants as f64 / took.as_secs_f64();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "tenants": args.tenants, "in_flight": CREATE_IN_FLIGHT, "elapsed_s": took.as_secs_f64(),
                "tenants_per_s": per_s,
            })
        );
    } else {
        println!(
            "create-tenants: {} tenants (mixed modes, {CREATE_IN_FLIGHT} in flight) in {:.1}s = {per_s:.1} tenants/s",
            args.tenants,
            took.as_secs_f64()
        );
    }
    Ok(())
}

pub async fn failover_many(args: ManyArgs) -> Result<()> {
    let dir = cluster_dir("failover-many");
    let cluster = Cluster::up(&args.ctl, dir.clone(), args.tuning.as_deref(), args.keep_logs.clone()).await?;
    let addrs = tetrad_ops::cluster_dir::ClusterFile::load(&dir)?.api_addrs();
    // The cluster directory's admin identity, which `cluster up` made.
    let identity = Identity::load(&Identity::default_path(&dir))?;
    let n = args.tenants;
    let created_in = create_tenants(&addrs, &identity, n).await?;
    eprintln!("created {n} tenants in {:.1}s", created_in.as_secs_f64());

    let stride = (n / args.writers.clamp(1, n.max(1))).max(1);
    let writers: Vec<Writer> =
        (0..n).step_by(stride).take(args.writers).map(|i| Writer::start(addrs.clone(), identity.clone(), i)).collect();

    // Warm-up: every writer acks, and every tenant is led from the primary region (sync
    // tenants' leaders move there after their first election).
    let deadline = Instant::now() + WARM_UP_BOUND;
    let before = loop {
        let st = status(&addrs, &identity).await?;
        let views = tenant_views(&st);
        let led_here = views.values().filter(|(_, _, r)| r == PRIMARY).count();
        let warm = writers.iter().all(|w| w.acks().len() >= ACKS_BEFORE_KILL);
        if warm && led_here == n {
            break st;
        }
        if Instant::now() >= deadline {
            if !warm {
                bail!("writers did not all ack {ACKS_BEFORE_KILL} times within {WARM_UP_BOUND:?}");
            }
            eprintln!("warning: only {led_here} of {n} tenants led from {PRIMARY} at the kill");
            break st;
        }
        sleep(Duration::from_millis(500)).await;
    };
    let old_views = tenant_views(&before);
    let survivors: Vec<String> =
        before.nodes.iter().filter(|n| n.region != PRIMARY).map(|n| n.api_addr.clone()).collect();
    let old_acks: Vec<(u64, u64)> =
        writers.iter().map(|w| w.acks().iter().map(|a| (a.epoch, a.term)).max().unwrap_or((0, 0))).collect();

    let killed_at = Instant::now();
    cluster.ctl(&["cluster", "kill-region", PRIMARY]).await?;

    // Poll a survivor's status until every tenant led from the killed region failed over.
    let affected: BTreeMap<String, (u64, u64)> =
        old_views.iter().filter(|(_, (_, _, r))| r == PRIMARY).map(|(k, (e, t, _))| (k.clone(), (*e, *t))).collect();
    let mut seen: BTreeMap<String, Duration> = BTreeMap::new();
    let mut status_calls = histogram()?;
    let deadline = killed_at + RECOVERY_BOUND;
    while seen.len() < affected.len() && Instant::now() < deadline {
        let asked = Instant::now();
        if let Ok(st) = status(&survivors, &identity).await {
            status_calls.record(asked.elapsed().as_millis().max(1) as u64)?;
            let at = killed_at.elapsed();
            for (name, (epoch, term, region)) in tenant_views(&st) {
                let Some(&(old_epoch, old_term)) = affected.get(&name) else { continue };
                let over = if name.starts_with("many-sync-") {
                    (epoch, term) > (old_epoch, old_term) && !region.is_empty() && region != PRIMARY
                } else {
                    epoch > old_epoch
                };
                if over {
                    seen.entry(name).or_insert(at);
                }
            }
        }
        sleep(POLL).await;
    }
    let stuck: Vec<&String> = affected.keys().filter(|k| !seen.contains_key(*k)).collect();
    if !stuck.is_empty() {
        eprintln!("not failed over within {}s: {stuck:?}", RECOVERY_BOUND.as_secs());
    }
    // Then wait for every writer's first ack from the new epoch (or the same bound): a writer
    // acks later than its tenant is seen failed over (near-sync waits for the lag gate).
    let recovered =
        |w: &Writer, old: (u64, u64)| first_recovered(tenant_name(w.tenant).1, &w.acks(), killed_at, old).is_some();
    while !writers.iter().zip(&old_acks).all(|(w, old)| recovered(w, *old)) && Instant::now() < deadline {
        sleep(POLL).await;
    }
    sleep(MAX_BACKOFF * 2).await;

    let mut out = Vec::new();
    for mode in MODES {
        let mut seen_h = histogram()?;
        let mut acked_h = histogram()?;
        let affected_here: Vec<&String> =
            affected.keys().filter(|k| k.starts_with(&format!("many-{}-", mode.name()))).collect();
        for k in &affected_here {
            if let Some(d) = seen.get(*k) {
                seen_h.record(d.as_millis().max(1) as u64)?;
            }
        }
        let mut unacked = 0;
        for (w, old) in writers.iter().zip(&old_acks) {
            if tenant_name(w.tenant).1 != mode {
                continue;
            }
            match first_recovered(mode, &w.acks(), killed_at, *old) {
                Some(at) => acked_h.record((at - killed_at).as_millis().max(1) as u64)?,
                None => unacked += 1,
            }
        }
        let not_seen = affected_here.len() - seen_h.len() as usize;
        out.push((mode, affected_here.len(), not_seen, seen_h, acked_h, unacked));
    }
    drop(writers);

    if args.json {
        let modes: Vec<serde_json::Value> = out
            .iter()
            .map(|(mode, affected, not_seen, seen_h, acked_h, unacked)| {
                serde_json::json!({
                    "mode": mode.name(), "affected": affected, "not_failed_over": not_seen,
                    "seen": summary(seen_h), "acked": summary(acked_h), "writers_without_ack": unacked,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "tenants": n, "writers": old_acks.len(), "killed": PRIMARY,
                "create_s": created_in.as_secs_f64(), "status_call": summary(&status_calls), "modes": modes,
            })
        );
    } else {
        println!(
            "failover-many: {n} tenants ({} with a writer), created in {:.1}s; killed {PRIMARY}",
            old_acks.len(),
            created_in.as_secs_f64()
        );
        for (mode, affected, not_seen, seen_h, acked_h, unacked) in &out {
            println!(
                "{:<10} affected {affected:>4}  seen failed over: {}  (not within {}s: {not_seen})  first ack: {}  (no ack: {unacked})",
                mode.name(),
                line(seen_h),
                RECOVERY_BOUND.as_secs(),
                line(acked_h),
            );
        }
        println!("status calls during the outage: {}", line(&status_calls));
        println!(
            "seen: from just before `cluster kill-region` to a survivor's Status showing a new epoch (near-sync, \
             async) or a later term led from another region (sync), polled every {} ms; first ack: a sampled \
             writer's first ack from the new leader.",
            POLL.as_millis()
        );
    }
    Ok(())
}
