//! The tetrad side of `push`: one sync tenant per client on a running local cluster, each client
//! pushing WAL segments of `size` fresh random bytes (fresh so that content addressing never
//! turns a push into "already present") over gRPC from this process, following leader redirects
//! (`tetrad_tests::grpc::Pusher`, one per client so that each has its own connection).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rand::{RngExt, SeedableRng};
use tetrad_ops::client::Identity;
use tetrad_tests::grpc::Pusher;

use crate::load::Writer;

/// How long one push may keep retrying (leader redirects, a tenant still starting).
const PUSH_BOUND: Duration = Duration::from_secs(60);

/// Creates `tenant` (sync, primary eu-central) with `tetradctl`, which routes to the meta leader;
/// a tenant left by an earlier run is reused.
pub fn create_tenant(ctl: &Path, cluster: &Path, tenant: &str) -> Result<()> {
    let out = Command::new(ctl)
        .arg("--cluster")
        .arg(cluster)
        .args(["tenant", "create", tenant, "--mode", "sync", "--primary", "eu-central"])
        .output()
        .with_context(|| format!("running {}", ctl.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || stderr.contains("already exists") {
        return Ok(());
    }
    bail!("tetradctl tenant create {tenant} failed ({}): {stderr}", out.status)
}

pub struct TetradWriter {
    pusher: Pusher,
    tenant: String,
    run_id: u64,
    size: usize,
    rng: rand::rngs::SmallRng,
    /// `Some(leader's API address)`: every push on a new connection, as one `tetradctl wal push`
    /// process per segment (PostgreSQL's `archive_command`) makes it.
    connect_per_push: Option<String>,
    identity: Identity,
    /// Failed attempts before an ack, by the reason's kind, shared by all clients of a run.
    pub retries: Retries,
}

/// Counts of failed attempts (redirects, `unavailable`, timeouts) by their reason.
pub type Retries = std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, u64>>>;

impl TetradWriter {
    pub fn new(
        cluster: &Path,
        tenant: String,
        size: usize,
        seed: u64,
        connect_per_push: bool,
        retries: Retries,
    ) -> Result<TetradWriter> {
        let file = tetrad_ops::cluster_dir::ClusterFile::load(cluster)?;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        // Names must be new in every run (the tenants outlive it); the bytes may repeat.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        let run_id = rng.random::<u64>() ^ now.as_nanos() as u64;
        let addrs = file.api_addrs();
        let connect_per_push = connect_per_push.then(|| addrs[0].clone());
        // The cluster directory's admin identity, as tetradctl uses it by default.
        let identity = Identity::load(&Identity::default_path(cluster))?;
        let pusher = Pusher::new(addrs, identity.clone());
        Ok(TetradWriter { pusher, tenant, run_id, size, rng, connect_per_push, retries, identity })
    }
}

impl Writer for TetradWriter {
    async fn write(&mut self, seq: u64) -> Result<()> {
        let mut data = vec![0u8; self.size];
        self.rng.fill(&mut data[..]);
        let name = format!("{:016x}{seq:08X}", self.run_id);
        if let Some(leader) = &mut self.connect_per_push {
            return push_on_new_connection(leader, &self.identity, &self.tenant, &name, data).await;
        }
        let pushed = self
            .pusher
            .push(&self.tenant, &name, &data, PUSH_BOUND)
            .await
            .map_err(|e| anyhow::anyhow!("push {name} to {}: {e}", self.tenant))?;
        if !pushed.failed_attempts.is_empty() {
            let mut retries = self.retries.lock().expect("retries lock");
            for attempt in &pushed.failed_attempts {
                // "<addr>: <code> <message> (<kind>)": the node's address is left out, and the
                // message cut short, so that one cause counts as one.
                let what = attempt.split_once(": ").map_or(attempt.as_str(), |(_, rest)| rest);
                *retries.entry(what.chars().take(100).collect()).or_default() += 1;
            }
        }
        if pushed.reply.already_present && !pushed.maybe_stored_before {
            bail!("push {name} to {} was already present: the bench's names must be fresh", self.tenant);
        }
        Ok(())
    }
}

/// One push on a connection of its own, following `not-leader` redirects (remembered in
/// `leader`); other refusals are retried after 100 ms until [`PUSH_BOUND`].
async fn push_on_new_connection(
    leader: &mut String,
    identity: &Identity,
    tenant: &str,
    name: &str,
    data: Vec<u8>,
) -> Result<()> {
    use tetrad_proto::v1::push_wal_request::Msg;
    use tetrad_proto::v1::tetrad_client::TetradClient;
    use tetrad_proto::v1::{PushHeader, PushWalRequest};

    let deadline = std::time::Instant::now() + PUSH_BOUND;
    let blake3 = blake3::hash(&data).to_hex().to_string();
    let header = PushHeader {
        tenant: tenant.to_owned(),
        name: name.to_owned(),
        size: data.len() as u64,
        blake3,
        chunks: Vec::new(),
    };
    loop {
        let endpoint = tetrad_ops::client::endpoint(leader, identity).map_err(anyhow::Error::msg)?;
        let mut client = TetradClient::new(endpoint.connect().await?);
        let mut msgs = vec![PushWalRequest { msg: Some(Msg::Header(header.clone())) }];
        // In messages of at most 1 MiB, as tetradctl sends them.
        msgs.extend(data.chunks(1 << 20).map(|c| PushWalRequest { msg: Some(Msg::Data(c.to_vec())) }));
        let status = match client.push_wal(futures_iter(msgs)).await {
            Ok(_) => return Ok(()),
            Err(status) => status,
        };
        match status.metadata().get(tetrad_proto::LEADER_API_KEY).and_then(|v| v.to_str().ok()) {
            Some(l) if l != leader.as_str() => *leader = l.to_owned(),
            _ if std::time::Instant::now() > deadline => bail!("push {name} to {tenant} failed: {status}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn futures_iter(
    v: Vec<tetrad_proto::v1::PushWalRequest>,
) -> impl tonic::codegen::tokio_stream::Stream<Item = tetrad_proto::v1::PushWalRequest> {
    tonic::codegen::tokio_stream::iter(v)
}
