//! `wal-push`: WAL segments of `size` bytes pushed into one tenant of the given mode, in its
//! default placement, `in_flight` at a time (each push on a client of its own, closed loop), on a
//! local cluster the bench starts (and purges after) or one given with `--cluster`. Reports MiB/s
//! of segment data and per-push latency, and the tenant's replica count (voters + learners from
//! its record), which is what `wal-push --limit --replicas` is run with.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::load::{self, LoadResult};
use crate::rto::{Cluster, Mode};
use crate::tetrad_push::{Retries, TetradWriter};

pub struct WalPushArgs {
    pub ctl: PathBuf,
    /// `None`: a fresh local cluster under `data_dir`.
    pub cluster: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub mode: Mode,
    pub size: usize,
    pub in_flight: usize,
    pub duration: Duration,
}

pub struct WalPushResult {
    pub load: LoadResult,
    pub replicas: usize,
    pub tenant: String,
}

pub async fn wal_push(a: WalPushArgs) -> Result<WalPushResult> {
    let (cluster_dir, _guard) = match &a.cluster {
        Some(dir) => (dir.clone(), None),
        None => {
            let dir = a.data_dir.join(format!("tetrad-bench-walpush-{}-{}", std::process::id(), a.mode.name()));
            let c = Cluster::up(&a.ctl, dir.clone(), None, None).await?;
            (dir, Some(c))
        }
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
    let tenant = format!("walpush-{}-{}", a.mode.name(), now % 1_000_000_000);
    let mut create = vec!["--cluster", cluster_dir.to_str().context("cluster dir is not UTF-8")?];
    create.extend(["tenant", "create", &tenant]);
    create.extend(a.mode.create_args());
    let out = std::process::Command::new(&a.ctl).args(&create).output()?;
    if !out.status.success() {
        anyhow::bail!("tetradctl {} failed: {}", create.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    let retries = Retries::default();
    let mut writers = Vec::with_capacity(a.in_flight);
    for i in 0..a.in_flight {
        writers.push(TetradWriter::new(&cluster_dir, tenant.clone(), a.size, 11 ^ i as u64, false, retries.clone())?);
    }
    let result = load::run(writers, load::Stop::After(a.duration)).await?;
    {
        let retries = retries.lock().expect("retries lock");
        if !retries.is_empty() {
            eprintln!("failed attempts before an ack, by reason:");
            for (reason, n) in retries.iter() {
                eprintln!("  {n:6}  {reason}");
            }
        }
    }
    let replicas = replicas(&a.ctl, &cluster_dir, &tenant)?;
    Ok(WalPushResult { load: result, replicas, tenant })
}

/// Voters + learners in the tenant's record (`tetradctl tenant show --json`).
fn replicas(ctl: &std::path::Path, cluster: &std::path::Path, tenant: &str) -> Result<usize> {
    let out = std::process::Command::new(ctl)
        .arg("--cluster")
        .arg(cluster)
        .args(["tenant", "show", tenant, "--json"])
        .output()?;
    if !out.status.success() {
        anyhow::bail!("tetradctl tenant show {tenant} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("tenant show --json")?;
    let count = |k: &str| v.get(k).and_then(|x| x.as_array()).map_or(0, |a| a.len());
    Ok(count("voters") + count("learners"))
}

/// MiB/s of segment data.
pub fn mib_per_s(r: &LoadResult, size: usize) -> f64 {
    r.writes as f64 * size as f64 / (1 << 20) as f64 / r.elapsed.as_secs_f64()
}

pub fn quantile_ms(r: &LoadResult, q: f64) -> f64 {
    r.latency_us.value_at_quantile(q) as f64 / 1000.0
}
