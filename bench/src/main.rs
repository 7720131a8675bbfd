//! `tetrad-bench`: measurements, recorded with hdrhistogram and the exact command that produced
//! them. Never asserted in tests; this machine is noisy, so compare figures from one run only.
//!
//! - `cluster-up --runs N`: time of `tetradctl cluster up --local` (fresh directory each run).
//! - `push --count N --size BYTES`: single-client push latency against a running local cluster,
//!   over gRPC from this process (no CLI start-up cost), following leader redirects.
//! - `rto --modes sync,near-sync,async --runs N`: recovery time after a region kill, per mode,
//!   each run on a fresh local cluster (`rto.rs`).
//! - `log-append --count N --size BYTES --dir DIR`: durable Raft log appends, the node's log files
//!   against one redb commit per append (`log_append.rs`).

mod log_append;
mod rto;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use rand::{RngExt, SeedableRng};
use tetrad_proto::v1::tetrad_client::TetradClient;
use tetrad_proto::v1::{push_wal_request, CreateTenantRequest, PushHeader, PushWalRequest};

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
    /// Pushes `count` segments of `size` bytes one after another and reports latency.
    Push {
        /// A running cluster (`tetradctl cluster up --local`); the bench creates its tenant.
        #[arg(long, default_value = "./tetrad-local")]
        cluster: PathBuf,
        #[arg(long, default_value = "bench")]
        tenant: String,
        #[arg(long, default_value_t = 200)]
        count: u32,
        #[arg(long, default_value_t = 1 << 20)]
        size: usize,
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

async fn push(cluster: PathBuf, tenant: String, count: u32, size: usize) -> Result<()> {
    let file = tetrad_ops::cluster_dir::ClusterFile::load(&cluster)?;
    let addrs = file.api_addrs();
    let mut client = TetradClient::connect(format!("http://{}", addrs[0])).await?;
    let _ = client
        .create_tenant(CreateTenantRequest {
            name: tenant.clone(),
            mode: "sync".into(),
            primary: "eu-central".into(),
            ..Default::default()
        })
        .await;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let mut h = Histogram::<u64>::new(3)?;
    let mut leader = addrs[0].clone();
    let run_id: u64 = rng.random();
    for i in 0..count {
        let mut data = vec![0u8; size];
        rng.fill(&mut data[..]);
        let name = format!("{run_id:016x}{i:08X}");
        let blake3 = blake3::hash(&data).to_hex().to_string();
        let t = Instant::now();
        let deadline = t + Duration::from_secs(60);
        loop {
            let mut c = TetradClient::connect(format!("http://{leader}")).await?.max_encoding_message_size(8 << 20);
            let mut msgs = vec![PushWalRequest {
                msg: Some(push_wal_request::Msg::Header(PushHeader {
                    tenant: tenant.clone(),
                    name: name.clone(),
                    size: size as u64,
                    blake3: blake3.clone(),
                })),
            }];
            for piece in data.chunks(1 << 20) {
                msgs.push(PushWalRequest { msg: Some(push_wal_request::Msg::Data(piece.to_vec())) });
            }
            match c.push_wal(tokio_stream_iter(msgs)).await {
                Ok(_) => break,
                Err(s) => {
                    if let Some(l) = s.metadata().get(tetrad_proto::LEADER_API_KEY).and_then(|v| v.to_str().ok()) {
                        leader = l.to_string();
                    } else if Instant::now() > deadline {
                        bail!("push {name} failed: {s}");
                    } else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        h.record(t.elapsed().as_micros() as u64)?;
    }
    report(&format!("push {size} B, single client, sync tenant"), &h);
    Ok(())
}

fn tokio_stream_iter(v: Vec<PushWalRequest>) -> impl tonic::codegen::tokio_stream::Stream<Item = PushWalRequest> {
    tonic::codegen::tokio_stream::iter(v)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    println!("command: {}", std::env::args().collect::<Vec<_>>().join(" "));
    match cli.cmd {
        Cmd::ClusterUp { runs } => cluster_up(runs),
        Cmd::Push { cluster, tenant, count, size } => {
            tokio::runtime::Runtime::new()?.block_on(push(cluster, tenant, count, size))
        }
        Cmd::LogAppend { count, size, dir } => log_append::log_append(&dir, count, size),
        Cmd::Rto { modes, runs, segment_bytes, tuning, keep_logs } => {
            let args = rto::RtoArgs { ctl: bin("tetradctl")?, modes, runs, segment_bytes, tuning, keep_logs };
            tokio::runtime::Runtime::new()?.block_on(rto::rto(args))
        }
    }
}
