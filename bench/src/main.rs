//! `tetrad-bench`: measurements, recorded with hdrhistogram and the exact command that produced
//! them. Never asserted in tests; this machine is noisy, so compare figures from one run only.
//!
//! - `cluster-up --runs N`: time of `tetradctl cluster up --local` (fresh directory each run).
//! - `push --clients N --duration S --size BYTES [--json] [--peer etcd]`: closed-loop small
//!   writes, N clients at once (`load.rs`), against a running local cluster over gRPC from this
//!   process (`tetrad_push.rs`), or the same workload as KV puts against a three-member etcd that
//!   the bench starts on loopback and stops after (`etcd.rs`).
//! - `rto --modes sync,near-sync,async --runs N`: recovery time after a region kill, per mode,
//!   each run on a fresh local cluster (`rto.rs`).
//! - `log-append --count N --size BYTES --dir DIR`: durable Raft log appends, the node's log files
//!   against one redb commit per append (`log_append.rs`).
//! - `wal-push --size 16MiB --in-flight K --mode M --duration S [--cluster DIR] [--json]`: segments
//!   pushed into one tenant of mode M, K at a time, in MiB/s (`wal_push.rs`); with `--limit
//!   --replicas R`, the irreducible work of the same pushes on this machine instead: R copies
//!   each over QUIC+TLS on loopback, blake3'd, written and fdatasync'd (`wal_push_limit.rs`).
//!   `bench/wal-push-table.sh` runs both per mode and writes a section of `bench/RESULTS.md`.
//! - `failover-many --tenants N [--writers W] [--json]`: N tenants in mixed modes with primary
//!   eu-west, writers on a sample, then eu-west killed: per-mode p50/p99/max of the time until each
//!   tenant failed over (`failover_many.rs`); `create-tenants --tenants N`: tenants created per
//!   second on a fresh local cluster.

mod etcd;
mod failover_many;
mod load;
mod log_append;
mod rto;
mod tetrad_push;
mod wal_push;
mod wal_push_limit;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;

#[derive(Parser)]
#[command(name = "tetrad-bench")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Times `tetradctl cluster up --local` on a fresh directory, `runs` times.
    ClusterUp {
        #[arg(long, default_value_t = 3)]
        runs: u32,
    },
    /// Closed-loop small writes: `clients` clients, each pushing one segment of `size` bytes at a
    /// time, for `duration` seconds (or `count` pushes each); with `--peer etcd`, the same
    /// workload as etcd KV puts against a three-member etcd the bench starts on loopback.
    Push {
        /// A running cluster (`tetradctl cluster up --local`); the bench creates its tenants
        /// (sync, one per client: `<tenant>-<i>`). Not used with `--peer etcd`.
        #[arg(long, default_value = "./tetrad-local")]
        cluster: PathBuf,
        /// Tenant name prefix.
        #[arg(long, default_value = "bench")]
        tenant: String,
        #[arg(long, default_value_t = 1)]
        clients: usize,
        /// Timed pushes per client, when no `--duration` is given.
        #[arg(long, default_value_t = 200)]
        count: u64,
        /// Seconds to run; overrides `--count`.
        #[arg(long)]
        duration: Option<f64>,
        #[arg(long, default_value_t = 1 << 20)]
        size: usize,
        #[arg(long, value_enum, default_value = "tetrad")]
        peer: Peer,
        /// The etcd binary (`--peer etcd`).
        #[arg(long, default_value = "etcd")]
        etcd_bin: PathBuf,
        /// Where etcd's data directories go (`--peer etcd`; a real disk, not a tmpfs).
        #[arg(long, default_value = "/var/tmp")]
        etcd_dir: PathBuf,
        /// Open a new connection for every push, as one `tetradctl wal push` per segment does
        /// (tetrad only).
        #[arg(long)]
        connect_per_push: bool,
        /// Print one JSON object (`clients`, `puts_per_s`, `p50_ms`, `p99_ms`, ...) instead of a line.
        #[arg(long)]
        json: bool,
    },
    /// Kills the region of a tenant's leader under a writer and measures the time to the first
    /// ack from the new leader, `runs` times per mode, each on a fresh local cluster.
    Rto {
        #[arg(long, value_enum, value_delimiter = ',', default_value = "sync,near-sync,async")]
        modes: Vec<rto::Mode>,
        #[arg(long, default_value_t = 3)]
        runs: u32,
        /// Bytes per pushed segment.
        #[arg(long, default_value_t = 64 << 10)]
        segment_bytes: usize,
        /// Passed to `cluster up --tuning` (`[raft]`, `[liveness]`); default: the nodes' defaults.
        #[arg(long, value_name = "FILE")]
        tuning: Option<PathBuf>,
        /// Copy each run's node logs to DIR/<mode>-<run>/ before its cluster is torn down.
        #[arg(long, value_name = "DIR")]
        keep_logs: Option<PathBuf>,
    },
    /// Durable Raft log appends one at a time: the node's log files against one redb commit per
    /// append (how the log was stored before), on the disk holding `dir`.
    LogAppend {
        #[arg(long, default_value_t = 2000)]
        count: u64,
        #[arg(long, default_value_t = 64 << 10)]
        size: usize,
        /// Where to write (not a tmpfs: fdatasync must reach a disk).
        #[arg(long, default_value = "/var/tmp")]
        dir: PathBuf,
    },
    /// WAL segments pushed into one tenant of `mode` (default placement), `in-flight` at a time,
    /// for `duration` seconds: MiB/s of segment data and per-push latency. With `--limit`, the
    /// irreducible work of those pushes on this machine instead (no cluster): `replicas` copies
    /// of each, each over its own QUIC stream with mutual TLS on loopback, blake3'd once, written
    /// to a new file under `--dir` and fdatasync'd (and its directory fsync'd).
    WalPush {
        /// Segment size: bytes, or with a KiB/MiB suffix.
        #[arg(long, default_value = "16MiB", value_parser = parse_size)]
        size: usize,
        #[arg(long, default_value_t = 1)]
        in_flight: usize,
        #[arg(long, value_enum, default_value = "sync")]
        mode: rto::Mode,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// A running cluster; without it the bench starts a local one under `--dir` and purges it.
        #[arg(long)]
        cluster: Option<PathBuf>,
        /// Where a started cluster's data (or `--limit`'s files) go: a real disk, not a tmpfs.
        #[arg(long, default_value = "/var/tmp")]
        dir: PathBuf,
        /// Measure the irreducible work instead of tetrad (`--replicas` copies per push).
        #[arg(long)]
        limit: bool,
        /// Copies per push for `--limit` (a tenant's voters + learners; `wal-push` reports it).
        #[arg(long, default_value_t = 5)]
        replicas: usize,
        /// One JSON object (`mib_per_s`, `p50_ms`, `p99_ms`, `replicas`, ...) instead of a line.
        #[arg(long)]
        json: bool,
    },
    /// N tenants (sync, near-sync, async in turn) with primary eu-west on a fresh local cluster,
    /// a writer on `writers` of them, then eu-west killed: per mode, how long until each tenant
    /// led from there failed over (seen in a survivor's status) and until each writer acked again.
    FailoverMany {
        #[arg(long, default_value_t = 50)]
        tenants: usize,
        #[arg(long, default_value_t = 12)]
        writers: usize,
        /// Passed to `cluster up --tuning`; default: the nodes' defaults.
        #[arg(long, value_name = "FILE")]
        tuning: Option<PathBuf>,
        /// Copy the node logs to DIR before the cluster is torn down.
        #[arg(long, value_name = "DIR")]
        keep_logs: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Creates N tenants (mixed modes) on a fresh local cluster: tenants created per second.
    CreateTenants {
        #[arg(long, default_value_t = 100)]
        tenants: usize,
        #[arg(long)]
        json: bool,
    },
}

/// `16MiB`, `64KiB`, `1048576`.
fn parse_size(s: &str) -> Result<usize, String> {
    let (num, mult) = if let Some(n) = s.strip_suffix("MiB") {
        (n, 1 << 20)
    } else if let Some(n) = s.strip_suffix("KiB") {
        (n, 1 << 10)
    } else {
        (s, 1)
    };
    num.trim().parse::<usize>().map(|n| n * mult).map_err(|e| format!("bad size {s:?}: {e}"))
}

fn bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.parent().context("no parent dir")?.join(name);
    if !p.exists() {
        bail!("{} not found; run `cargo build --release --bins` first", p.display());
    }
    Ok(p)
}

fn report(what: &str, h: &Histogram<u64>) {
    println!(
        "{what}: n={} p50={:.1}ms p90={:.1}ms p99={:.1}ms max={:.1}ms",
        h.len(),
        h.value_at_quantile(0.50) as f64 / 1000.0,
        h.value_at_quantile(0.90) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    );
}

fn cluster_up(runs: u32) -> Result<()> {
    let ctl = bin("tetradctl")?;
    let mut h = Histogram::<u64>::new(3)?;
    for i in 0..runs {
        let dir = std::env::temp_dir().join(format!("tetrad-bench-up-{}-{i}", std::process::id()));
        let t = Instant::now();
        let out = Command::new(&ctl).arg("--cluster").arg(&dir).args(["cluster", "up", "--local"]).output()?;
        let took = t.elapsed();
        let _ = Command::new(&ctl).arg("--cluster").arg(&dir).args(["cluster", "down", "--purge"]).output();
        if !out.status.success() {
            bail!("cluster up failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        h.record(took.as_micros() as u64)?;
    }
    report("cluster-up", &h);
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Peer {
    Tetrad,
    Etcd,
}

struct PushArgs {
    cluster: PathBuf,
    tenant: String,
    clients: usize,
    stop: load::Stop,
    size: usize,
    peer: Peer,
    etcd_bin: PathBuf,
    etcd_dir: PathBuf,
    json: bool,
    connect_per_push: bool,
}

async fn push(a: PushArgs) -> Result<()> {
    let seed = 7;
    let (peer, result) = match a.peer {
        Peer::Tetrad => {
            let ctl = bin("tetradctl")?;
            let mut writers = Vec::with_capacity(a.clients);
            let retries = tetrad_push::Retries::default();
            for i in 0..a.clients {
                let tenant = format!("{}-{i}", a.tenant);
                tetrad_push::create_tenant(&ctl, &a.cluster, &tenant)?;
                writers.push(tetrad_push::TetradWriter::new(
                    &a.cluster,
                    tenant,
                    a.size,
                    seed ^ i as u64,
                    a.connect_per_push,
                    retries.clone(),
                )?);
            }
            let result = load::run(writers, a.stop).await?;
            let retries = retries.lock().expect("retries lock");
            if !retries.is_empty() {
                // Retried attempts are inside the latencies above; this says what they were.
                eprintln!("failed attempts before an ack, by reason:");
                for (reason, n) in retries.iter() {
                    eprintln!("  {n:6}  {reason}");
                }
            }
            ("tetrad".to_owned(), result)
        }
        Peer::Etcd => {
            let version = etcd::version(&a.etcd_bin)?;
            let mut cluster = etcd::EtcdCluster::start(&a.etcd_bin, &a.etcd_dir).await?;
            let writers = cluster.writers(a.clients, a.size, seed).await?;
            let result = load::run(writers, a.stop).await;
            drop(cluster);
            (version, result?)
        }
    };
    if a.json {
        println!("{}", result.json(&peer, a.size));
    } else {
        let what = match a.peer {
            Peer::Tetrad => format!("tetrad push {} B, sync tenant per client", a.size),
            Peer::Etcd => format!("{peer} put {} B, 3 members", a.size),
        };
        println!("{}", result.line(&what));
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    // `--json` output is one object on stdout, for scripts; the command line goes to stderr then.
    if std::env::args().any(|a| a == "--json") {
        eprintln!("command: {command}");
    } else {
        println!("command: {command}");
    }
    match cli.cmd {
        Cmd::ClusterUp { runs } => cluster_up(runs),
        Cmd::Push {
            cluster,
            tenant,
            clients,
            count,
            duration,
            size,
            peer,
            etcd_bin,
            etcd_dir,
            connect_per_push,
            json,
        } => {
            let stop = match duration {
                Some(s) => load::Stop::After(Duration::from_secs_f64(s)),
                None => load::Stop::Count(count),
            };
            let args =
                PushArgs { cluster, tenant, clients, stop, size, peer, etcd_bin, etcd_dir, json, connect_per_push };
            tokio::runtime::Runtime::new()?.block_on(push(args))
        }
        Cmd::LogAppend { count, size, dir } => log_append::log_append(&dir, count, size),
        Cmd::WalPush { size, in_flight, mode, duration, cluster, dir, limit, replicas, json } => {
            let duration = Duration::from_secs_f64(duration);
            let rt = tokio::runtime::Runtime::new()?;
            let (what, result, replicas, mode, tenant) = if limit {
                let a = wal_push_limit::LimitArgs { replicas, size, in_flight, duration, dir };
                ("limit", rt.block_on(wal_push_limit::limit(a))?, replicas, None, None)
            } else {
                let a = wal_push::WalPushArgs {
                    ctl: bin("tetradctl")?,
                    cluster,
                    data_dir: dir,
                    mode,
                    size,
                    in_flight,
                    duration,
                };
                let r = rt.block_on(wal_push::wal_push(a))?;
                ("tetrad", r.load, r.replicas, Some(mode.name()), Some(r.tenant))
            };
            let mib = wal_push::mib_per_s(&result, size);
            let (p50, p99) = (wal_push::quantile_ms(&result, 0.5), wal_push::quantile_ms(&result, 0.99));
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "what": what, "mode": mode, "tenant": tenant, "size": size, "in_flight": in_flight,
                        "replicas": replicas, "pushes": result.writes,
                        "elapsed_s": result.elapsed.as_secs_f64(), "mib_per_s": mib,
                        "p50_ms": p50, "p99_ms": p99,
                    })
                );
            } else {
                println!(
                    "wal-push {what} mode={} size={size} in_flight={in_flight} replicas={replicas}: \
                     {} pushes in {:.1}s = {mib:.1} MiB/s, p50={p50:.1}ms p99={p99:.1}ms",
                    mode.unwrap_or("-"),
                    result.writes,
                    result.elapsed.as_secs_f64()
                );
            }
            Ok(())
        }
        Cmd::Rto { modes, runs, segment_bytes, tuning, keep_logs } => {
            let args = rto::RtoArgs { ctl: bin("tetradctl")?, modes, runs, segment_bytes, tuning, keep_logs };
            tokio::runtime::Runtime::new()?.block_on(rto::rto(args))
        }
        Cmd::FailoverMany { tenants, writers, tuning, keep_logs, json } => {
            let args = failover_many::ManyArgs { ctl: bin("tetradctl")?, tenants, writers, tuning, keep_logs, json };
            tokio::runtime::Runtime::new()?.block_on(failover_many::failover_many(args))
        }
        Cmd::CreateTenants { tenants, json } => {
            let args = failover_many::ManyArgs {
                ctl: bin("tetradctl")?,
                tenants,
                writers: 0,
                tuning: None,
                keep_logs: None,
                json,
            };
            tokio::runtime::Runtime::new()?.block_on(failover_many::create_only(args))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_parse_with_and_without_a_suffix() {
        assert_eq!(super::parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(super::parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(super::parse_size("1000"), Ok(1000));
        assert!(super::parse_size("16MB").is_err());
    }
}
