//! One simulated run of a seed: boot, load, faults from the scenario, heal, then the oracles.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tetrad_node::node::Node;
use tetrad_node::seams::net::NodeId;

use crate::cluster::{ClusterSpec, SimCluster};
use crate::workload::{run_client, AckLog, ClientSpec};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// No faults: the baseline.
    Calm,
    RegionOutage,
    NodeCrash,
}

impl Scenario {
    pub fn parse(s: &str) -> Option<Scenario> {
        match s {
            "calm" => Some(Scenario::Calm),
            "region-outage" => Some(Scenario::RegionOutage),
            "node-crash" => Some(Scenario::NodeCrash),
            _ => None,
        }
    }
    pub fn names() -> &'static [&'static str] {
        &["calm", "region-outage", "node-crash"]
    }
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub seed: u64,
    pub duration: Duration,
    pub scenario: Scenario,
}

#[derive(Clone, Debug, Default)]
pub struct RunReport {
    pub seed: u64,
    pub trace_hash: String,
    pub acked: usize,
    pub lost: usize,
    pub violations: Vec<String>,
    pub faults: Vec<String>,
    /// Time from each region failure to the next ack (ms of simulated time).
    pub rto_ms: Vec<u64>,
    pub sim_secs: f64,
    pub wall_secs: f64,
    pub messages: u64,
}

impl RunReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Runs a seed on a fresh seeded runtime. Panics inside the run are caught by the caller.
pub fn run(opts: &RunOptions) -> RunReport {
    tetrad_node::raft::runtime::seed_thread_rng(opts.seed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .rng_seed(tokio::runtime::RngSeed::from_bytes(&opts.seed.to_le_bytes()))
        .build()
        .expect("a current-thread runtime builds");
    let wall = Instant::now();
    let mut report = rt.block_on(run_async(opts.clone()));
    report.wall_secs = wall.elapsed().as_secs_f64();
    report
}

async fn run_async(opts: RunOptions) -> RunReport {
    let origin = tokio::time::Instant::now();
    let mut report = RunReport { seed: opts.seed, ..Default::default() };
    let mut rng = SmallRng::seed_from_u64(opts.seed ^ 0x7363_656e_6172_696f);
    let mut c = match SimCluster::boot(ClusterSpec::new(opts.seed)).await {
        Ok(c) => c,
        Err(e) => {
            report.violations.push(format!("liveness: cluster did not boot: {e}"));
            return report;
        }
    };
    let tenant = "t1".to_string();
    if let Err(e) = create_tenant(&c, &tenant).await {
        report.violations.push(format!("liveness: tenant not created: {e}"));
        c.shutdown().await;
        return report;
    }
    let acks = AckLog::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut clients = vec![];
    for i in 0..3u32 {
        let spec = ClientSpec {
            id: i,
            tenant: tenant.clone(),
            seed: rng.random(),
            min_bytes: 512,
            max_bytes: 48 << 10,
            think: Duration::from_millis(rng.random_range(20..200)),
        };
        clients.push(tokio::spawn(run_client(
            spec,
            c.handles.clone(),
            acks.clone(),
            c.trace.clone(),
            origin,
            stop_rx.clone(),
        )));
    }
    let monitor = tokio::spawn(leader_monitor(c.handles.clone(), stop_rx.clone()));

    // Faults.
    let start = tokio::time::Instant::now();
    let end = start + opts.duration;
    match opts.scenario {
        Scenario::Calm => tokio::time::sleep_until(end).await,
        Scenario::RegionOutage => {
            let region = rng.random_range(0..4usize);
            let at = Duration::from_millis(rng.random_range(8_000..15_000));
            let down_for = Duration::from_millis(rng.random_range(8_000..20_000));
            tokio::time::sleep_until(start + at).await;
            let acked_before = acks.all().len();
            report.faults.push(format!("t={:.1}s crash region {}", at.as_secs_f64(), crate::cluster::REGIONS[region]));
            let failed_at = tokio::time::Instant::now();
            c.crash_region(region).await;
            let rto_deadline = failed_at + down_for;
            // RTO: from the failure to the first new ack.
            while tokio::time::Instant::now() < rto_deadline {
                if acks.all().len() > acked_before {
                    report.rto_ms.push(failed_at.elapsed().as_millis() as u64);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep_until(rto_deadline).await;
            report.faults.push(format!(
                "t={:.1}s restart region {}",
                (at + down_for).as_secs_f64(),
                crate::cluster::REGIONS[region]
            ));
            if let Err(e) = c.restart_region(region).await {
                report.violations.push(format!("restart failed: {e}"));
            }
            tokio::time::sleep_until(end.max(tokio::time::Instant::now())).await;
        }
        Scenario::NodeCrash => {
            let ids: Vec<NodeId> = c.nodes.keys().copied().collect();
            let victim = ids[rng.random_range(0..ids.len())];
            let at = Duration::from_millis(rng.random_range(5_000..15_000));
            let down_for = Duration::from_millis(rng.random_range(3_000..20_000));
            tokio::time::sleep_until(start + at).await;
            report.faults.push(format!("t={:.1}s crash node {victim}", at.as_secs_f64()));
            c.crash(victim).await;
            tokio::time::sleep(down_for).await;
            report.faults.push(format!("restart node {victim}"));
            if let Err(e) = c.start(victim).await {
                report.violations.push(format!("restart failed: {e}"));
            }
            tokio::time::sleep_until(end.max(tokio::time::Instant::now())).await;
        }
    }
    let _ = stop_tx.send(true);
    for cl in clients {
        let _ = cl.await;
    }
    if let Ok(v) = monitor.await {
        report.violations.extend(v);
    }

    // Heal and settle, then check every claim.
    let healed_at = tokio::time::Instant::now();
    let ids: Vec<NodeId> = c.nodes.keys().copied().collect();
    for id in ids {
        if let Err(e) = c.start(id).await {
            report.violations.push(format!("restart failed: {e}"));
        }
    }
    let acked = acks.all();
    report.acked = acked.len();
    check_liveness_and_durability(&c, &tenant, &acked, &mut report).await;
    check_convergence(&c, &tenant, &mut report).await;
    report.sim_secs = origin.elapsed().as_secs_f64();
    report.messages = c.net.counts().0;
    c.trace.event(&format!(
        "end acked={} lost={} healed_after={}",
        report.acked,
        report.lost,
        healed_at.elapsed().as_millis()
    ));
    report.trace_hash = c.trace.hex();
    c.shutdown().await;
    report
}

async fn create_tenant(c: &SimCluster, name: &str) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let node = c.running().into_iter().next().ok_or("no node runs")?;
        match node.create_tenant(name, "sync", Some("eu-central"), 0, "block", &[]).await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() > deadline => return Err(e.to_string()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Finds the tenant's leader among running nodes (bounded wait).
async fn leader_of(c: &SimCluster, tenant: &str, limit: Duration) -> Option<Node> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        for n in c.running() {
            if n.list(tenant, "").await.is_ok() {
                return Some(n);
            }
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Liveness: once faults heal, the tenant acks a new write within the bound. Durability (sync):
/// every acked write is served with its exact bytes.
async fn check_liveness_and_durability(
    c: &SimCluster,
    tenant: &str,
    acked: &[crate::workload::Ack],
    report: &mut RunReport,
) {
    const LIVENESS_BOUND: Duration = Duration::from_secs(30);
    let Some(leader) = leader_of(c, tenant, LIVENESS_BOUND).await else {
        report.violations.push(format!("liveness: no leader for {tenant} within {LIVENESS_BOUND:?} after healing"));
        return;
    };
    let probe = b"post-heal probe".to_vec();
    let h = *blake3::hash(&probe).as_bytes();
    let deadline = tokio::time::Instant::now() + LIVENESS_BOUND;
    loop {
        let mut ok = false;
        for n in c.running() {
            if n.push(tenant, "zz-probe", h, probe.clone()).await.is_ok() {
                ok = true;
                break;
            }
        }
        if ok {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            report
                .violations
                .push(format!("liveness: {tenant} acked no write within {LIVENESS_BOUND:?} after healing"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let leader = leader_of(c, tenant, LIVENESS_BOUND).await.unwrap_or(leader);
    for a in acked {
        match leader.fetch(tenant, &a.name).await {
            Ok((rec, data)) => {
                if rec.blake3 != a.blake3 || blake3::hash(&data).as_bytes() != &a.blake3 {
                    report.lost += 1;
                    report.violations.push(format!("safety: acked segment {} is served with different bytes", a.name));
                }
            }
            Err(e) => {
                report.lost += 1;
                report
                    .violations
                    .push(format!("sync claim: acked write {} (acked at {} ms) is lost: {e}", a.name, a.acked_at_ms));
            }
        }
    }
}

/// Replicas converge to identical state once faults heal.
async fn check_convergence(c: &SimCluster, tenant: &str, report: &mut RunReport) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let group = format!("t/{tenant}/1");
    loop {
        let mut digests = BTreeMap::new();
        for n in c.running() {
            if let Some(d) = n.replica_digest(&group).await {
                digests.insert(n.id(), d);
            }
        }
        let distinct: std::collections::BTreeSet<_> = digests.values().map(|(_, n, h)| (*n, *h)).collect();
        if distinct.len() == 1 && digests.len() >= 4 {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            report.violations.push(format!("convergence: replicas of {group} differ after healing: {digests:?}"));
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Safety: at most one leader per term per group, sampled every 50 ms of simulated time.
async fn leader_monitor(
    handles: std::sync::Arc<std::sync::Mutex<BTreeMap<NodeId, Node>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<String> {
    let mut seen: BTreeMap<(String, u64), NodeId> = BTreeMap::new();
    let mut violations = vec![];
    loop {
        let nodes: Vec<Node> = handles.lock().expect("handles lock").values().cloned().collect();
        for n in nodes {
            for (group, term, leader) in n.group_leaders() {
                if leader != Some(n.id()) {
                    continue;
                }
                match seen.get(&(group.clone(), term)) {
                    Some(other) if *other != n.id() => violations
                        .push(format!("safety: group {group} has two leaders in term {term}: {other} and {}", n.id())),
                    _ => {
                        seen.insert((group, term), n.id());
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = stop.changed() => return violations,
        }
    }
}
