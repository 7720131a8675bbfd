//! The etcd peer: a three-member etcd cluster on loopback ports the bench picks, started for one
//! run and stopped after it, and a [`Writer`] that puts through etcd's gRPC KV API.
//!
//! The members' data directories live under `dir` (a real disk, so that etcd's fdatasync costs
//! what it costs) and are removed when the cluster is dropped. Every client gets its own
//! connection to the current leader, as tetrad's clients talk to their tenant's leader, so neither
//! side pays for a forwarding hop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::{RngExt, SeedableRng};
use tonic::transport::{Channel, Endpoint};

use crate::load::Writer;

pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

use pb::kv_client::KvClient;
use pb::maintenance_client::MaintenanceClient;

const MEMBERS: usize = 3;
/// How long three fresh members may take to elect a leader.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running three-member etcd cluster; dropping it kills the members and deletes their data.
pub struct EtcdCluster {
    members: Vec<Child>,
    client_urls: Vec<String>,
    dir: PathBuf,
}

/// Loopback ports that were free a moment ago (the OS picked them); etcd binds them next.
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<std::io::Result<_>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// `etcd --version`'s first line, for the record of a run.
pub fn version(etcd: &Path) -> Result<String> {
    let out = Command::new(etcd).arg("--version").output().with_context(|| format!("running {}", etcd.display()))?;
    let first = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("unknown").to_owned();
    Ok(first.strip_prefix("etcd Version: ").map_or(first.clone(), |v| format!("etcd {v}")))
}

impl EtcdCluster {
    /// Starts the members under a new directory in `parent` and waits until they have a leader.
    pub async fn start(etcd: &Path, parent: &Path) -> Result<EtcdCluster> {
        let dir = parent.join(format!("tetrad-bench-etcd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let ports = free_ports(2 * MEMBERS)?;
        let client_urls: Vec<String> = (0..MEMBERS).map(|i| format!("http://127.0.0.1:{}", ports[i])).collect();
        let peer_urls: Vec<String> = (0..MEMBERS).map(|i| format!("http://127.0.0.1:{}", ports[MEMBERS + i])).collect();
        let initial_cluster = (0..MEMBERS).map(|i| format!("m{i}={}", peer_urls[i])).collect::<Vec<_>>().join(",");
        let mut cluster = EtcdCluster { members: vec![], client_urls, dir };
        for (i, peer_url) in peer_urls.iter().enumerate() {
            let log = std::fs::File::create(cluster.dir.join(format!("m{i}.log")))?;
            let child = Command::new(etcd)
                .arg("--name")
                .arg(format!("m{i}"))
                .arg("--data-dir")
                .arg(cluster.dir.join(format!("m{i}")))
                .args(["--listen-client-urls", &cluster.client_urls[i]])
                .args(["--advertise-client-urls", &cluster.client_urls[i]])
                .args(["--listen-peer-urls", peer_url])
                .args(["--initial-advertise-peer-urls", peer_url])
                .args(["--initial-cluster", &initial_cluster])
                .args(["--initial-cluster-token", "tetrad-bench", "--initial-cluster-state", "new"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", etcd.display()))?;
            cluster.members.push(child);
        }
        cluster.wait_for_leader().await?;
        Ok(cluster)
    }

    /// The client URL of the member that is leader now.
    async fn wait_for_leader(&mut self) -> Result<String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::from("no member answered yet");
        while Instant::now() < deadline {
            for (i, child) in self.members.iter_mut().enumerate() {
                if let Some(status) = child.try_wait()? {
                    bail!("etcd member m{i} exited ({status}); see {}", self.dir.join(format!("m{i}.log")).display());
                }
            }
            for url in &self.client_urls {
                match member_status(url).await {
                    Ok((me, leader)) if leader != 0 && me == leader => return Ok(url.clone()),
                    Ok(_) => last = format!("{url}: no leader yet"),
                    Err(e) => last = format!("{url}: {e:#}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the etcd cluster found no leader within {START_TIMEOUT:?}: {last}")
    }

    /// One writer per client, each with its own connection to the leader.
    pub async fn writers(&mut self, clients: usize, size: usize, seed: u64) -> Result<Vec<EtcdWriter>> {
        let leader = self.wait_for_leader().await?;
        let mut writers = Vec::with_capacity(clients);
        for i in 0..clients {
            let kv = KvClient::new(channel(&leader).await?);
            writers.push(EtcdWriter { kv, client: i, size, rng: rand::rngs::SmallRng::seed_from_u64(seed ^ i as u64) });
        }
        Ok(writers)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for child in &mut self.members {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn channel(url: &str) -> Result<Channel> {
    // tonic's default is TCP_NODELAY on; said here because the comparison depends on it.
    let endpoint = Endpoint::from_shared(url.to_owned())?.tcp_nodelay(true).connect_timeout(Duration::from_secs(2));
    endpoint.connect().await.with_context(|| format!("connecting to {url}"))
}

/// (this member's id, the leader's id as this member sees it; 0 = none).
async fn member_status(url: &str) -> Result<(u64, u64)> {
    let mut m = MaintenanceClient::new(channel(url).await?);
    let reply = tokio::time::timeout(Duration::from_secs(2), m.status(pb::StatusRequest {}))
        .await
        .context("no status within 2 s")??
        .into_inner();
    let me = reply.header.context("status without a header")?.member_id;
    Ok((me, reply.leader))
}

/// One etcd client: puts `bench/<client>/<seq>` with `size` random bytes, waiting for each reply.
pub struct EtcdWriter {
    kv: KvClient<Channel>,
    client: usize,
    size: usize,
    rng: rand::rngs::SmallRng,
}

impl Writer for EtcdWriter {
    async fn write(&mut self, seq: u64) -> Result<()> {
        let mut value = vec![0u8; self.size];
        self.rng.fill(&mut value[..]);
        let key = format!("bench/{}/{seq:012}", self.client).into_bytes();
        self.kv.put(pb::PutRequest { key, value, lease: 0, prev_kv: false }).await?;
        Ok(())
    }
}
