//! `rto`: the recovery time after a region kill, per replication mode, on fresh local clusters
//! with default timeouts (issue #4, done-means 5).
//!
//! Each run starts its own cluster (`tetradctl cluster up --local` in a temporary directory,
//! torn down with `cluster down --purge` whatever happens), creates one tenant with primary
//! `eu-west`, runs one writer that pushes small segments back to back over gRPC, and after
//! [`ACKS_BEFORE_KILL`] acks SIGKILLs the region that holds the tenant's leader
//! (`tetradctl cluster kill-region`). The measured RTO runs from just before that command to the
//! writer's first ack from the new leader: an ack whose reply epoch is past the old epoch
//! (near-sync, async: the failover controller's new epoch) or, for sync, whose (epoch, term) is
//! past the newest one acked before the kill (openraft's election inside the same epoch; the
//! term rules out an ack the dead leader had sent before it died). It includes the client's own
//! delay in noticing (a backoff of at most 250 ms, [`MAX_BACKOFF`]). For near-sync and async the
//! tenant's own record (`tenant history --json`, `rto_ms`, counted from the old leader's last
//! liveness renewal to the new epoch's first ack) is collected beside it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use hdrhistogram::Histogram;
use tetrad_ops::client::Identity;
use tetrad_proto::json;
use tetrad_proto::v1::tetrad_client::TetradClient;
use tetrad_proto::v1::StatusRequest;
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};

use tetrad_tests::grpc::Pusher;

/// Lower than the test client's 1 s: the backoff bounds how late the writer notices that a new
/// leader acks, so it bounds the resolution of a measured RTO.
const MAX_BACKOFF: Duration = Duration::from_millis(250);

/// The tenant's primary region.
const PRIMARY: &str = "eu-west";
/// Acks the writer must have before the kill.
const ACKS_BEFORE_KILL: usize = 30;
/// Bound on waiting for those acks (cluster start-up, tenant creation, first election).
const WARM_UP_BOUND: Duration = Duration::from_secs(60);
/// Bound on waiting for the first ack from the new leader. Far past every target, so a slow
/// failover is measured rather than cut off.
const RECOVERY_BOUND: Duration = Duration::from_secs(60);
/// Bound on waiting for the tenant's history to record `rto_ms`.
const HISTORY_BOUND: Duration = Duration::from_secs(30);
/// Bound on one push, retries included; a push that runs out is counted and the next starts.
const PUSH_BOUND: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Mode {
    Sync,
    NearSync,
    Async,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::NearSync => "near-sync",
            Mode::Async => "async",
        }
    }

    /// Issue #4's targets for a region kill on loopback with default timeouts.
    pub fn target(self) -> Duration {
        match self {
            Mode::Sync => Duration::from_secs(3),
            Mode::NearSync | Mode::Async => Duration::from_secs(10),
        }
    }

    /// `tenant create` options beyond the name.
    pub(crate) fn create_args(self) -> Vec<&'static str> {
        let mut args = vec!["--mode", self.name(), "--primary", PRIMARY];
        if self == Mode::NearSync {
            args.extend(["--rpo-target", "1s"]);
        }
        args
    }

    /// Whether the tenant records the failover in its history (a new epoch); sync fails over by
    /// election inside its epoch and records nothing.
    fn records_failover(self) -> bool {
        self != Mode::Sync
    }
}

/// One acked push: when the ack arrived and what the reply said.
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    pub at: Instant,
    pub epoch: u64,
    pub term: u64,
}

/// The arrival time of the first ack from the leader that replaced the one acking at `old`
/// ((epoch, term) of the newest ack before the kill), among acks that arrived after `killed_at`.
pub fn first_recovered(mode: Mode, acks: &[Ack], killed_at: Instant, old: (u64, u64)) -> Option<Instant> {
    acks.iter()
        .filter(|a| a.at >= killed_at)
        .filter(|a| match mode {
            Mode::NearSync | Mode::Async => a.epoch > old.0,
            Mode::Sync => (a.epoch, a.term) > old,
        })
        .map(|a| a.at)
        .min()
}

/// A local cluster in its own directory, torn down (`cluster down --purge`) when dropped, so an
/// error or a panic anywhere in a run leaves no processes behind.
pub(crate) struct Cluster {
    ctl: PathBuf,
    dir: PathBuf,
    /// Where the nodes' logs are copied before the teardown, if anywhere.
    keep_logs: Option<PathBuf>,
}

impl Cluster {
    pub(crate) async fn up(
        ctl: &Path,
        dir: PathBuf,
        tuning: Option<&Path>,
        keep_logs: Option<PathBuf>,
    ) -> Result<Self> {
        // The guard exists before `up` runs: a half-started cluster is torn down too.
        let cluster = Cluster { ctl: ctl.to_owned(), dir, keep_logs };
        let tuning = tuning.map(|t| t.to_string_lossy().into_owned());
        let mut args = vec!["cluster", "up", "--local"];
        if let Some(t) = &tuning {
            args.extend(["--tuning", t]);
        }
        cluster.ctl(&args).await?;
        Ok(cluster)
    }

    /// Runs `tetradctl --cluster DIR ARGS` and returns its stdout, or an error with its output.
    pub(crate) async fn ctl(&self, args: &[&str]) -> Result<String> {
        let out = tokio::process::Command::new(&self.ctl)
            .arg("--cluster")
            .arg(&self.dir)
            .args(args)
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("cannot run {}", self.ctl.display()))?;
        if !out.status.success() {
            bail!(
                "`tetradctl {}` failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn api_addrs(&self) -> Result<Vec<String>> {
        Ok(tetrad_ops::cluster_dir::ClusterFile::load(&self.dir)?.api_addrs())
    }

    /// Copies every `nodes/<name>/node.log` to `to/<name>.log`.
    fn copy_logs(&self, to: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(self.dir.join("nodes"))? {
            let entry = entry?;
            let log = entry.path().join("node.log");
            if log.exists() {
                std::fs::copy(&log, to.join(format!("{}.log", entry.file_name().to_string_lossy())))?;
            }
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(to) = &self.keep_logs {
            if let Err(e) = self.copy_logs(to) {
                eprintln!("warning: cannot copy the node logs of {} to {}: {e}", self.dir.display(), to.display());
            }
        }
        let down = std::process::Command::new(&self.ctl)
            .arg("--cluster")
            .arg(&self.dir)
            .args(["cluster", "down", "--purge"])
            .output();
        match down {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: cluster down --purge of {} failed: {}",
                self.dir.display(),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("warning: cannot run cluster down for {}: {e}", self.dir.display()),
        }
    }
}

/// One writer pushing segments back to back until dropped.
struct Writer {
    acks: Arc<Mutex<Vec<Ack>>>,
    failed: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Writer {
    fn start(addrs: Vec<String>, identity: Identity, tenant: String, segment_bytes: usize) -> Self {
        let acks: Arc<Mutex<Vec<Ack>>> = Arc::default();
        let failed: Arc<Mutex<Vec<String>>> = Arc::default();
        let (log, errors) = (acks.clone(), failed.clone());
        let task = tokio::spawn(async move {
            let pusher = Pusher::new(addrs, identity).with_max_backoff(MAX_BACKOFF);
            for n in 1u64.. {
                let name = segment_name(n);
                let bytes = segment_data(&tenant, n, segment_bytes);
                match pusher.push(&tenant, &name, &bytes, PUSH_BOUND).await {
                    Ok(pushed) => {
                        let ack = Ack { at: Instant::now(), epoch: pushed.reply.epoch, term: pushed.reply.term };
                        log.lock().expect("ack log").push(ack);
                    }
                    Err(e) => errors.lock().expect("error log").push(format!("{name}: {e}")),
                }
            }
        });
        Writer { acks, failed, task }
    }

    fn acks(&self) -> Vec<Ack> {
        self.acks.lock().expect("ack log").clone()
    }

    fn failed(&self) -> Vec<String> {
        self.failed.lock().expect("error log").clone()
    }

    /// Polls the ack log until `done` answers, at most `bound`.
    async fn wait<T>(&self, what: &str, bound: Duration, mut done: impl FnMut(&[Ack]) -> Option<T>) -> Result<T> {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(t) = done(&self.acks()) {
                return Ok(t);
            }
            if Instant::now() >= deadline {
                let acks = self.acks();
                bail!(
                    "{what}: not within {bound:?} ({} acks, last {:?}; failed pushes: {:?})",
                    acks.len(),
                    acks.last(),
                    self.failed()
                );
            }
            sleep(POLL).await;
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// PostgreSQL's name for segment `n` of timeline 1.
fn segment_name(n: u64) -> String {
    format!("{:08X}{:08X}{:08X}", 1, n / 256, n % 256)
}

/// Pseudo-random bytes for segment `n` (blake3's extendable output: cheap and reproducible).
fn segment_data(tenant: &str, n: u64, size: usize) -> Vec<u8> {
    let mut bytes = vec![0; size];
    blake3::Hasher::new_derive_key("tetrad-bench rto segment bytes")
        .update(format!("{tenant}/{n}").as_bytes())
        .finalize_xof()
        .fill(&mut bytes);
    bytes
}

/// The tenant's leader and the region it is in, from any node's `Status`.
async fn leader_region(addrs: &[String], identity: &Identity, tenant: &str) -> Result<(String, String)> {
    let mut last = String::from("no node asked");
    for addr in addrs {
        let endpoint = tetrad_ops::client::endpoint(addr, identity).map_err(anyhow::Error::msg)?;
        let status = match endpoint.connect().await.map(TetradClient::new) {
            Ok(mut c) => c.status(StatusRequest {}).await,
            Err(e) => {
                last = format!("{addr}: {e}");
                continue;
            }
        };
        let status = match status {
            Ok(s) => s.into_inner(),
            Err(e) => {
                last = format!("{addr}: {e}");
                continue;
            }
        };
        let Some(t) = status.tenants.iter().find(|t| t.name == tenant) else {
            last = format!("{addr}: no tenant {tenant} in status");
            continue;
        };
        match status.nodes.iter().find(|n| n.id == t.leader) {
            Some(n) => return Ok((t.leader.clone(), n.region.clone())),
            None => last = format!("{addr}: tenant {tenant} has no known leader ({:?})", t.leader),
        }
    }
    bail!("cannot find the leader of {tenant}: {last}")
}

/// `rto_ms` of the failover out of epoch `from`, once `tenant history --json` records it.
async fn recorded_rto_ms(cluster: &Cluster, tenant: &str, from: u64) -> Result<u64> {
    let deadline = Instant::now() + HISTORY_BOUND;
    loop {
        let out = cluster.ctl(&["tenant", "history", tenant, "--json"]).await?;
        let events: Vec<json::Event> =
            serde_json::from_str(&out).with_context(|| format!("history --json is not a list of events: {out}"))?;
        let rto = events.iter().filter(|e| e.kind == "failover" && e.from_epoch == from).find_map(|e| e.rto_ms);
        if let Some(ms) = rto {
            return Ok(ms);
        }
        if Instant::now() >= deadline {
            bail!("no failover out of epoch {from} with rto_ms within {HISTORY_BOUND:?}: {out}");
        }
        sleep(Duration::from_millis(500)).await;
    }
}

/// `HH:MM:SS.mmmZ` of `t`, to find the kill in the nodes' logs (which log UTC).
fn utc_time_of_day(t: std::time::SystemTime) -> String {
    let ms = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis()) % 86_400_000;
    format!("{:02}:{:02}:{:02}.{:03}Z", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
}

/// What one run measured.
struct RunResult {
    rto: Duration,
    recorded_rto_ms: Option<u64>,
    line: String,
}

/// What `rto` is asked to do.
pub struct RtoArgs {
    pub ctl: PathBuf,
    pub modes: Vec<Mode>,
    pub runs: u32,
    pub segment_bytes: usize,
    /// `cluster up --tuning FILE`: the nodes' `[raft]` and `[liveness]` timings (default: the
    /// nodes' defaults, which issue #4's targets are about).
    pub tuning: Option<PathBuf>,
    /// Copy each run's node logs to `<dir>/<mode>-<run>/` before its cluster is torn down.
    pub keep_logs: Option<PathBuf>,
}

async fn one_run(args: &RtoArgs, mode: Mode, run: u32) -> Result<RunResult> {
    let dir = std::env::temp_dir().join(format!("tetrad-bench-rto-{}-{}-{run}", std::process::id(), mode.name()));
    let keep_logs = args.keep_logs.as_ref().map(|d| d.join(format!("{}-{run}", mode.name())));
    let up_started = Instant::now();
    let cluster = Cluster::up(&args.ctl, dir, args.tuning.as_deref(), keep_logs).await?;
    let up_took = up_started.elapsed();
    let tenant = format!("rto-{}", mode.name());
    let mut create = vec!["tenant", "create", &tenant];
    create.extend(mode.create_args());
    cluster.ctl(&create).await?;
    let addrs = cluster.api_addrs()?;
    // The cluster directory's admin identity, which `cluster up` made.
    let identity = Identity::load(&Identity::default_path(&cluster.dir))?;
    let writer = Writer::start(addrs.clone(), identity.clone(), tenant.clone(), args.segment_bytes);
    writer
        .wait(&format!("{ACKS_BEFORE_KILL} acks"), WARM_UP_BOUND, |a| (a.len() >= ACKS_BEFORE_KILL).then_some(()))
        .await?;
    let (leader, region) = leader_region(&addrs, &identity, &tenant).await?;
    // The newest (epoch, term) acked so far; an ack that arrives after the kill with a later
    // one can only come from a new leader.
    let old = writer.acks().iter().map(|a| (a.epoch, a.term)).max().context("acks were counted")?;
    let acks_before = writer.acks().len();
    let killed_at = Instant::now();
    let killed_wall = utc_time_of_day(std::time::SystemTime::now());
    cluster.ctl(&["cluster", "kill-region", &region]).await?;
    let kill_took = killed_at.elapsed();
    let recovered =
        writer.wait("an ack from the new leader", RECOVERY_BOUND, |a| first_recovered(mode, a, killed_at, old)).await?;
    let rto = recovered - killed_at;
    let new = writer.acks().iter().filter(|a| a.at == recovered).map(|a| (a.epoch, a.term)).next().unwrap_or(old);
    let failed = writer.failed().len();
    drop(writer);
    let recorded_rto_ms =
        if mode.records_failover() { Some(recorded_rto_ms(&cluster, &tenant, old.0).await?) } else { None };
    let line = format!(
        "{} run {run}: up {:.1}s; {acks_before} acks in (epoch {}, term {}); killed {region} at {killed_wall} (leader \
         {leader}, kill took {} ms); first ack (epoch {}, term {}) {:.2}s after the kill; recorded rto_ms {}; {failed} push(es) \
         gave up",
        mode.name(),
        up_took.as_secs_f64(),
        old.0,
        old.1,
        kill_took.as_millis(),
        new.0,
        new.1,
        rto.as_secs_f64(),
        recorded_rto_ms.map_or("-".to_string(), |ms| ms.to_string()),
    );
    Ok(RunResult { rto, recorded_rto_ms, line })
}

/// One mode's measurements, in milliseconds.
struct ModeSummary {
    mode: Mode,
    measured: Histogram<u64>,
    recorded: Histogram<u64>,
    failed_runs: u32,
}

fn histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 3_600_000, 3)?)
}

fn seconds(ms: u64) -> String {
    format!("{:.2}s", ms as f64 / 1000.0)
}

/// The table: per mode, runs, p50 and max of the measured RTO, the target and whether the worst
/// run met it, and the tenant's recorded `rto_ms`.
fn print_table(summaries: &[ModeSummary]) {
    println!();
    println!(
        "{:<10} {:>4} {:>6} {:>9} {:>9} {:>7} {:>7}   {:>13} {:>13}",
        "mode", "runs", "failed", "p50 RTO", "max RTO", "target", "result", "recorded p50", "recorded max"
    );
    for s in summaries {
        let n = s.measured.len();
        let (p50, max) = if n == 0 {
            ("-".into(), "-".into())
        } else {
            (seconds(s.measured.value_at_quantile(0.5)), seconds(s.measured.max()))
        };
        let (rp50, rmax) = if s.recorded.is_empty() {
            ("-".into(), "-".into())
        } else {
            (seconds(s.recorded.value_at_quantile(0.5)), seconds(s.recorded.max()))
        };
        let target = s.mode.target();
        let met = n > 0 && s.failed_runs == 0 && Duration::from_millis(s.measured.max()) <= target;
        println!(
            "{:<10} {:>4} {:>6} {:>9} {:>9} {:>7} {:>7}   {:>13} {:>13}",
            s.mode.name(),
            n,
            s.failed_runs,
            p50,
            max,
            format!("{}s", target.as_secs()),
            if met { "met" } else { "missed" },
            rp50,
            rmax
        );
    }
    println!(
        "RTO: from just before `cluster kill-region` to the writer's first ack from the new leader; result: max <= \
         target and no failed run. recorded: the tenant's own `rto_ms` (tenant history), from the old leader's last \
         liveness renewal to the new epoch's first ack; sync records none."
    );
}

pub async fn rto(args: RtoArgs) -> Result<()> {
    let mut summaries = Vec::new();
    for &mode in &args.modes {
        let mut s = ModeSummary { mode, measured: histogram()?, recorded: histogram()?, failed_runs: 0 };
        for run in 1..=args.runs {
            match one_run(&args, mode, run).await {
                Ok(r) => {
                    println!("{}", r.line);
                    s.measured.record(r.rto.as_millis().max(1) as u64)?;
                    if let Some(ms) = r.recorded_rto_ms {
                        s.recorded.record(ms.max(1))?;
                    }
                }
                Err(e) => {
                    println!("{} run {run}: FAILED: {e:#}", mode.name());
                    s.failed_runs += 1;
                }
            }
        }
        summaries.push(s);
    }
    if let Some(t) = &args.tuning {
        println!("\ntimings: cluster up --tuning {} (not the nodes' defaults)", t.display());
    }
    print_table(&summaries);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(base: Instant, ms: u64, epoch: u64, term: u64) -> Ack {
        Ack { at: base + Duration::from_millis(ms), epoch, term }
    }

    #[test]
    fn a_new_epoch_ends_a_near_sync_or_async_outage_and_a_new_term_alone_does_not() {
        let base = Instant::now();
        let killed = base + Duration::from_millis(100);
        let acks = [ack(base, 50, 1, 3), ack(base, 120, 1, 3), ack(base, 900, 1, 4), ack(base, 4000, 2, 1)];
        for mode in [Mode::NearSync, Mode::Async] {
            assert_eq!(first_recovered(mode, &acks, killed, (1, 3)), Some(base + Duration::from_millis(4000)));
        }
    }

    #[test]
    fn a_sync_outage_ends_with_the_first_ack_of_a_later_term_after_the_kill() {
        let base = Instant::now();
        let killed = base + Duration::from_millis(100);
        // The ack at 120 ms left the dead leader before it died: same term, not a recovery.
        let acks = [ack(base, 50, 1, 3), ack(base, 120, 1, 3), ack(base, 2500, 1, 5), ack(base, 2600, 1, 5)];
        assert_eq!(first_recovered(Mode::Sync, &acks, killed, (1, 3)), Some(base + Duration::from_millis(2500)));
        assert_eq!(first_recovered(Mode::Sync, &acks[..2], killed, (1, 3)), None);
    }

    #[test]
    fn kill_times_print_as_utc_time_of_day() {
        let t = std::time::UNIX_EPOCH + Duration::from_millis(3 * 86_400_000 + 3_723_004);
        assert_eq!(utc_time_of_day(t), "01:02:03.004Z");
    }
}
