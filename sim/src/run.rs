//! One simulated run of a seed: boot, create the tenant, put clients to work, carry out the
//! scenario's plan, heal, then check the oracles. Everything runs on one seeded, paused-time,
//! current-thread tokio runtime, so a seed always gives the same run.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tetrad_node::meta::state::Mode;
use tetrad_node::planted::Bug;

use crate::budget::Budget;
use crate::cluster::{ClusterSpec, SimCluster, REGIONS};
use crate::episode;
use crate::fault::{Driver, TenantInfo};
use crate::monitor::monitor;
use crate::oracle;
use crate::timeline::{Timeline, TimelineData};
use crate::workload::{run_client, Ack, AckLog, ClientSpec};

pub use crate::scenario::{Scenario, Without};

/// The client load: this many clients, each pushing segments in the size range (see
/// `workload::segment_size`), pausing between an ack and its next push for a time drawn from the
/// think range.
pub const CLIENTS: u32 = 3;
const SEGMENT_BYTES: (usize, usize) = (1 << 10, 256 << 10);
const THINK_MS: (u64, u64) = (100, 800);
/// near-sync tenants' lag-gate target.
pub const RPO_TARGET_MS: u64 = 1_000;

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub seed: u64,
    pub duration: Duration,
    pub scenario: Scenario,
    /// A planted bug (needs the `planted-bugs` feature).
    pub plant: Option<Bug>,
    /// Fault kinds left out of the plan.
    pub without: Without,
    /// Client tasks pushing segments (0: an idle cluster, to measure what the load costs).
    pub clients: u32,
    /// The tenant's mode; `None` draws it from the seed (a third each; near-sync's `on_lag`
    /// drawn too).
    pub mode: Option<Mode>,
}

impl RunOptions {
    pub fn new(seed: u64, duration: Duration, scenario: Scenario) -> Self {
        Self { seed, duration, scenario, plant: None, without: Without::default(), clients: CLIENTS, mode: None }
    }
}

/// The tenant's mode and near-sync `on_lag` for a seed: `mode` when given, else drawn.
pub fn draw_mode(seed: u64, mode: Option<Mode>) -> (Mode, &'static str) {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x6d6f_6465_6d6f_6465);
    let drawn = [Mode::Sync, Mode::NearSync, Mode::Async][rng.random_range(0..3usize)];
    let on_lag = if rng.random_bool(0.5) { "block" } else { "degrade" };
    (mode.unwrap_or(drawn), on_lag)
}

#[derive(Clone, Debug, Default)]
pub struct RunReport {
    pub seed: u64,
    pub scenario: String,
    /// The tenant's mode (and `on_lag` for near-sync).
    pub mode: String,
    pub plant: Option<String>,
    pub trace_hash: String,
    pub acked: usize,
    pub lost: usize,
    pub violations: Vec<String>,
    /// The plan's episodes and overlays, then every fault as it happened.
    pub faults: Vec<String>,
    /// Time from each disruption (a region or the leader taken away) to the next ack (ms).
    pub rto_ms: Vec<u64>,
    pub sim_secs: f64,
    pub wall_secs: f64,
    pub messages: u64,
    /// Over all nodes: redb syncs (one per durable commit), durable file writes (chunks,
    /// snapshots) and bytes written, as the simulated disks counted them.
    pub disk_syncs: u64,
    pub disk_file_writes: u64,
    pub disk_bytes: u64,
    /// Whether the run stayed within the fault budget, and if not, when and why it left it.
    pub within_budget: bool,
    pub budget_breach: Option<(u64, String)>,
    pub checked: Vec<&'static str>,
    pub notes: Vec<String>,
    /// Largest replication lag seen per region (writes behind the leader).
    pub max_lag: BTreeMap<String, u64>,
    /// (phase, simulated s, wall s) for boot, load (the plan), and check (heal and oracles).
    pub phases: Vec<(&'static str, f64, f64)>,
    pub timeline: TimelineData,
    pub acks: Vec<Ack>,
    pub lost_acks: Vec<Ack>,
    pub duration_ms: u64,
    /// The tenant's recorded history (failovers with their loss records, degraded periods),
    /// one line per event; window times in ms since the run began.
    pub history: Vec<String>,
}

impl RunReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Panics of this process since the last run began. A panic in any task of a run (a node's
/// assertion, say) fails the run, even though the task's runtime swallows it.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn record_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.lock().unwrap_or_else(|p| p.into_inner()).push(info.to_string());
            prev(info);
        }));
    });
    PANICS.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// How often a run's runtime ran out of ready tasks. Simulated time advances only then (the
/// clock is paused and jumps to the next timer), so a count that stops moving while a run is
/// going means tasks keep each other busy without time passing: a livelock, which the sweep's
/// watchdog (main.rs) reports.
pub static IDLE_TURNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Runs a seed on a fresh seeded runtime. A panic of the run itself unwinds to the caller; a
/// panic in one of its tasks is reported as a violation.
pub fn run(opts: &RunOptions) -> RunReport {
    if let Err(e) = tetrad_node::planted::plant(opts.plant) {
        return RunReport { seed: opts.seed, violations: vec![e], ..Default::default() };
    }
    record_panics();
    tetrad_node::raft::runtime::seed_thread_rng(opts.seed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .on_thread_park(|| {
            IDLE_TURNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .rng_seed(tokio::runtime::RngSeed::from_bytes(&opts.seed.to_le_bytes()))
        .build()
        .expect("a current-thread runtime builds");
    let wall = Instant::now();
    let mut report = rt.block_on(run_async(opts.clone()));
    // Stop every task of the run before the next seed starts.
    drop(rt);
    report.wall_secs = wall.elapsed().as_secs_f64();
    let _ = tetrad_node::planted::plant(None);
    for p in std::mem::take(&mut *PANICS.lock().unwrap_or_else(|p| p.into_inner())) {
        report.violations.push(format!("panic in a task: {p}"));
    }
    report
}

async fn run_async(opts: RunOptions) -> RunReport {
    let boot_origin = tokio::time::Instant::now();
    // Wall time only measures phases; nothing in the run depends on it.
    let wall = Instant::now();
    let mut phase = (boot_origin, wall);
    let mut end_phase = |name: &'static str, report: &mut RunReport| {
        let (sim, w) = (tokio::time::Instant::now(), Instant::now());
        report.phases.push((name, (sim - phase.0).as_secs_f64(), (w - phase.1).as_secs_f64()));
        phase = (sim, w);
    };
    let mut report = RunReport {
        seed: opts.seed,
        scenario: opts.scenario.name().to_string(),
        plant: opts.plant.map(|b| b.name().to_string()),
        duration_ms: opts.duration.as_millis() as u64,
        ..Default::default()
    };
    let mut rng = SmallRng::seed_from_u64(opts.seed ^ 0x7363_656e_6172_696f);
    let spec = ClusterSpec::new(opts.seed);
    let liveness = spec.liveness.clone();
    let mut c = match SimCluster::boot(spec).await {
        Ok(c) => c,
        Err(e) => {
            report.violations.push(format!("liveness: cluster did not boot: {e}"));
            return report;
        }
    };
    let primary_index = rng.random_range(0..REGIONS.len());
    let primary = REGIONS[primary_index];
    let (mode, on_lag) = draw_mode(opts.seed, opts.mode);
    report.mode = match mode {
        Mode::NearSync => format!("near-sync (rpo {RPO_TARGET_MS} ms, on lag {on_lag})"),
        m => m.as_str().to_string(),
    };
    let tenant = match create_tenant(&c, "t1", primary_index, mode, on_lag).await {
        Ok(t) => t,
        Err(e) => {
            report.violations.push(format!("liveness: tenant not created: {e}"));
            c.shutdown().await;
            return report;
        }
    };
    c.trace.event(&format!("tenant {} primary {primary} voters {:?}", tenant.name, tenant.voters));

    end_phase("boot", &mut report);
    // Test hook for the livelock watchdog (sim/tests/determinism.rs): a task that, from the given
    // simulated time on, never waits.
    if let Some(at) = std::env::var("TETRAD_SIM_SPIN_AT_MS").ok().and_then(|v| v.parse::<u64>().ok()) {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(at)).await;
            loop {
                tokio::task::yield_now().await;
            }
        });
    }
    let origin = tokio::time::Instant::now();
    let tl = Timeline::new(origin);
    for id in c.ids() {
        tl.node_state(id, "up");
    }
    tl.log(format!("tenant {} ({}, primary {primary}) on voters {:?}", tenant.name, report.mode, tenant.voters));
    let region_of = c.nodes.iter().map(|(id, n)| (*id, n.region)).collect();
    let budget = Arc::new(Mutex::new(Budget::new(region_of, &liveness)));
    let acks = AckLog::default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut clients = vec![];
    for i in 0..opts.clients {
        let spec = ClientSpec {
            id: i,
            tenant: tenant.name.clone(),
            seed: rng.random(),
            min_bytes: SEGMENT_BYTES.0,
            max_bytes: SEGMENT_BYTES.1,
            think_ms: THINK_MS,
            // One client in the primary region, the others in the next regions: a cut-off primary
            // keeps its local client, the rest of the world follows the failover.
            region: (primary_index + i as usize) % REGIONS.len(),
        };
        clients.push(tokio::spawn(run_client(
            spec,
            c.handles.clone(),
            c.net.clone(),
            acks.clone(),
            c.trace.clone(),
            origin,
            stop_rx.clone(),
        )));
    }
    let watcher = tokio::spawn(monitor(c.handles.clone(), tenant.name.clone(), tl.clone(), stop_rx.clone()));

    let plan = crate::scenario::Plan::draw(opts.scenario, opts.duration, &opts.without, &mut rng);
    report.faults.extend(plan.describe().into_iter().map(|p| format!("plan: {p}")));
    let mut overlays = vec![];
    if let Some(w) = plan.flaky_wan.clone() {
        overlays.push(tokio::spawn(episode::flaky_wan(c.net.clone(), tl.clone(), origin, w, rng.random())));
    }
    if let Some((w, beyond)) = plan.clock_skew.clone() {
        let clocks = c.nodes.iter().map(|(id, n)| (*id, n.clock.clone())).collect();
        overlays.push(tokio::spawn(episode::clock_skew(
            clocks,
            tl.clone(),
            budget.clone(),
            origin,
            w,
            beyond,
            rng.random(),
        )));
    }

    let driver_rng = SmallRng::seed_from_u64(rng.random());
    let mut d = Driver::new(&mut c, driver_rng, origin, tl.clone(), budget.clone(), acks.clone(), tenant.clone());
    for (w, e) in &plan.episodes {
        d.episode(w, *e).await;
    }
    d.at(opts.duration).await;
    for o in &overlays {
        o.abort();
    }
    let _ = stop_tx.send(true);
    for cl in clients {
        let _ = cl.await;
    }
    let mut reported = BTreeMap::new();
    if let Ok(w) = watcher.await {
        report.violations.extend(w.violations);
        reported = w.reported;
    }
    end_phase("load", &mut report);
    d.heal_all().await;
    let problems = std::mem::take(&mut d.problems);
    let outages = std::mem::take(&mut d.outages);
    drop(d);
    report.violations.extend(problems);
    let clock_origin = c.nodes.values().next().map(|n| n.clock.origin()).unwrap_or(origin);
    let ctx = crate::claims::Context {
        reported,
        outages,
        wall_at_origin_ms: crate::clock::SIM_EPOCH_MS + (origin - clock_origin).as_millis() as u64,
        drift_ms: liveness.max_clock_drift_ms,
        max_rate_ppm: tl.data().clocks.iter().map(|c| c.3.unsigned_abs()).max().unwrap_or(0),
    };

    let (within, breach) = {
        let b = budget.lock().expect("budget lock");
        (b.within(), b.breach().cloned())
    };
    report.within_budget = within;
    report.budget_breach = breach;
    let findings = oracle::after_heal(&c, &tenant, &acks, within, &ctx).await;
    report.violations.extend(findings.violations);
    for e in &findings.history {
        report.history.push(format!(
            "{} epoch {}->{} rto {:?} ms lost min {:?} max {:?} window {:?}..{:?}: {}",
            e.kind.as_str(),
            e.from_epoch,
            e.to_epoch,
            e.rto_ms,
            e.lost_writes_min,
            e.lost_writes_max,
            e.loss_window_start_ms.map(|t| t as i64 - ctx.wall_at_origin_ms as i64),
            e.loss_window_end_ms.map(|t| t as i64 - ctx.wall_at_origin_ms as i64),
            e.detail
        ));
    }
    report.notes = findings.notes;
    report.checked = findings.checked;
    report.checked.insert(0, "one-leader-per-term");
    report.lost = findings.lost.len();
    report.lost_acks = findings.lost;
    report.acks = acks.all();
    report.acked = report.acks.len();

    let data = tl.data();
    report.faults.extend(data.log.iter().map(|(t, s)| format!("t={:.1}s {s}", *t as f64 / 1000.0)));
    for d in &data.disruptions {
        if let Some(a) = report.acks.iter().find(|a| a.acked_at_ms > *d) {
            report.rto_ms.push(a.acked_at_ms - d);
        }
    }
    for s in &data.lag {
        for (region, writes, _) in &s.regions {
            let e = report.max_lag.entry(region.clone()).or_insert(0);
            *e = (*e).max(*writes);
        }
    }
    report.timeline = data;
    end_phase("check", &mut report);
    report.sim_secs = boot_origin.elapsed().as_secs_f64();
    report.messages = c.net.counts().delivered;
    for n in c.nodes.values() {
        let st = n.disk.stats();
        report.disk_syncs += st.backend_syncs;
        report.disk_file_writes += st.durable_file_writes;
        report.disk_bytes += st.bytes_written;
    }
    c.trace.event(&format!("end acked={} lost={}", report.acked, report.lost));
    report.trace_hash = c.trace.hex();
    c.shutdown().await;
    report
}

async fn create_tenant(
    c: &SimCluster,
    name: &str,
    primary: usize,
    mode: Mode,
    on_lag: &str,
) -> Result<TenantInfo, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (rpo, on_lag) = if mode == Mode::NearSync { (RPO_TARGET_MS, on_lag) } else { (0, "block") };
    loop {
        let node = c.running().into_iter().next().ok_or("no node runs")?;
        match node.create_tenant(name, mode.as_str(), Some(REGIONS[primary]), rpo, on_lag, &[]).await {
            Ok(rec) => {
                return Ok(TenantInfo {
                    name: name.to_string(),
                    group: rec.group(),
                    voters: rec.voters.clone(),
                    mode,
                    rpo_target_ms: rpo,
                    on_lag: on_lag.to_string(),
                    primary,
                })
            }
            Err(e) if tokio::time::Instant::now() > deadline => return Err(e.to_string()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
