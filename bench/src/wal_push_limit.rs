//! `wal-push --limit`: the irreducible work of pushing WAL segments on this machine, with no
//! consensus, no client protocol and no bookkeeping: what `wal-push` against a cluster is
//! measured beside.
//!
//! For every push of `size` fresh bytes, `replicas` copies go out at once, each on a QUIC stream
//! of its own over mutual TLS on loopback (quinn and rustls with the node's own configurations,
//! `tetrad_node::tls`, and its flow-control windows), one connection per replica as each replica
//! is another node. Each receiver reads its copy in full, hashes it once with blake3, writes it to
//! a new file under `dir` (the disk the cluster's data is on), `fdatasync`s it, `fsync`s the
//! directory (the file is new), and only then answers; the push is done when every replica has
//! answered. `in_flight` pushes run at once, each starting the next as it ends (closed loop).
//! Throughput is segment bytes acked per second, not copy bytes.
//!
//! What a real push does and this leaves out (so `limit` is an upper bound for tetrad): the
//! client-to-leader gRPC hop, Raft's log entries and their fsyncs, the state machine's records.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, TransportConfig, VarInt};
use rand::{RngExt, SeedableRng};

use crate::load::LoadResult;

/// The node's windows (`node/src/net/quic.rs`): a 16 MiB append flows in one go on loopback.
const STREAM_RECEIVE_WINDOW_BYTES: u32 = 16 << 20;
const CONNECTION_RECEIVE_WINDOW_BYTES: u32 = 64 << 20;
const CONNECTION_SEND_WINDOW_BYTES: u64 = 64 << 20;
/// A copy larger than this is refused by a receiver (a bound on what it buffers).
const MAX_COPY_BYTES: usize = 1 << 30;

pub struct LimitArgs {
    pub replicas: usize,
    pub size: usize,
    pub in_flight: usize,
    pub duration: Duration,
    /// Where the replicas' files go (a directory is made under it and removed after).
    pub dir: PathBuf,
}

fn transport() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(1024))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW_BYTES))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW_BYTES))
        .send_window(CONNECTION_SEND_WINDOW_BYTES);
    Arc::new(t)
}

/// One replica: a QUIC server on loopback that stores every copy it is sent.
async fn serve_replica(endpoint: Endpoint, dir: PathBuf) {
    let seq = Arc::new(AtomicU64::new(0));
    while let Some(incoming) = endpoint.accept().await {
        let dir = dir.clone();
        let seq = seq.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let dir = dir.clone();
                let n = seq.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let answer = match store_copy(&mut recv, &dir, n).await {
                        Ok(hash) => hash.as_bytes().to_vec(),
                        Err(e) => {
                            eprintln!("limit replica: {e:#}");
                            return;
                        }
                    };
                    let _ = send.write_all(&answer).await;
                    let _ = send.finish();
                    let _ = send.stopped().await;
                });
            }
        });
    }
}

/// Receives one copy, hashes it, writes it to a new file, fdatasyncs it and fsyncs the directory.
async fn store_copy(recv: &mut quinn::RecvStream, dir: &Path, n: u64) -> Result<blake3::Hash> {
    let data = recv.read_to_end(MAX_COPY_BYTES).await.context("reading a copy")?;
    let path = dir.join(format!("{n:012}"));
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || -> Result<blake3::Hash> {
        let hash = blake3::hash(&data);
        let mut f = std::fs::File::create_new(&path).with_context(|| format!("creating {}", path.display()))?;
        std::io::Write::write_all(&mut f, &data)?;
        f.sync_data()?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(hash)
    })
    .await?
}

/// Sends one copy on a new stream of `conn` and waits for the replica's answer (the copy's hash).
async fn send_copy(conn: quinn::Connection, data: Arc<Vec<u8>>, expect: blake3::Hash) -> Result<()> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&data).await?;
    send.finish()?;
    let answer = recv.read_to_end(64).await?;
    if answer != expect.as_bytes() {
        bail!("a replica answered a different hash");
    }
    Ok(())
}

pub async fn limit(a: LimitArgs) -> Result<LoadResult> {
    if a.replicas == 0 || a.in_flight == 0 {
        bail!("--replicas and --in-flight must be at least 1");
    }
    let root = a.dir.join(format!("tetrad-bench-limit-{}", std::process::id()));
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let result = run(&a, &root).await;
    if let Err(e) = std::fs::remove_dir_all(&root) {
        eprintln!("warning: cannot remove {}: {e}", root.display());
    }
    result
}

async fn run(a: &LimitArgs, root: &Path) -> Result<LoadResult> {
    let ca = tetrad_node::tls::CaBundle::generate("bench-limit")?;
    // Node certificates, with the node role, as the node-to-node port requires of its peers.
    let sender = ca.issue_node("sender", 1, "bench")?;
    let client_tls = tetrad_node::tls::client_config(&ca.cert_pem, &sender.cert_pem, &sender.key_pem)?;
    let mut client_cfg = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client_tls)?));
    client_cfg.transport_config(transport());
    let mut client = Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    client.set_default_client_config(client_cfg);

    let mut conns = Vec::with_capacity(a.replicas);
    let mut servers = Vec::with_capacity(a.replicas);
    for r in 0..a.replicas {
        let name = format!("replica-{r}");
        let cert = ca.issue_node(&name, r as u64 + 2, "bench")?;
        let server_tls = tetrad_node::tls::server_config(&ca.cert_pem, &cert.cert_pem, &cert.key_pem)?;
        let mut server_cfg = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server_tls)?));
        server_cfg.transport_config(transport());
        let endpoint = Endpoint::server(server_cfg, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let addr = endpoint.local_addr()?;
        let dir = root.join(&name);
        std::fs::create_dir_all(&dir)?;
        servers.push(endpoint.clone());
        tokio::spawn(serve_replica(endpoint, dir));
        conns.push(client.connect(addr, &name)?.await.with_context(|| format!("connecting to {name}"))?);
    }

    // One push: fresh bytes (as the tetrad side's), every replica's copy at once.
    let push = |conns: Vec<quinn::Connection>, data: Arc<Vec<u8>>| async move {
        let expect = blake3::hash(&data);
        let mut copies = tokio::task::JoinSet::new();
        for c in conns {
            copies.spawn(send_copy(c, data.clone(), expect));
        }
        while let Some(done) = copies.join_next().await {
            done??;
        }
        anyhow::Ok(())
    };

    let mut tasks = tokio::task::JoinSet::new();
    let barrier = Arc::new(tokio::sync::Barrier::new(a.in_flight + 1));
    for k in 0..a.in_flight {
        let conns = conns.clone();
        let barrier = barrier.clone();
        let (size, duration) = (a.size, a.duration);
        tasks.spawn(async move {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(k as u64);
            let fresh = |rng: &mut rand::rngs::SmallRng| {
                let mut d = vec![0u8; size];
                rng.fill(&mut d[..]);
                Arc::new(d)
            };
            // One untimed push, as the load harness does.
            let warm = push(conns.clone(), fresh(&mut rng)).await;
            barrier.wait().await;
            warm?;
            let start = Instant::now();
            let mut h = Histogram::<u64>::new(3)?;
            while start.elapsed() < duration {
                // Timed with the fill, as the tetrad side's writer fills inside its timed write.
                let t = Instant::now();
                push(conns.clone(), fresh(&mut rng)).await?;
                h.record(t.elapsed().as_micros() as u64)?;
            }
            anyhow::Ok(h)
        });
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut latency_us = Histogram::<u64>::new(3)?;
    while let Some(joined) = tasks.join_next().await {
        latency_us.add(&joined??)?;
    }
    let elapsed = start.elapsed();
    for c in &conns {
        c.close(VarInt::from_u32(0), b"done");
    }
    for s in &servers {
        s.close(VarInt::from_u32(0), b"done");
    }
    client.wait_idle().await;
    Ok(LoadResult { clients: a.in_flight, writes: latency_us.len(), elapsed, latency_us })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_push_reaches_every_replica_and_the_files_are_removed_after() {
        let base = std::env::temp_dir().join(format!("tetrad-bench-limit-test-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        let a = LimitArgs {
            replicas: 3,
            size: 256 << 10,
            in_flight: 2,
            duration: Duration::from_millis(300),
            dir: base.clone(),
        };
        let r = limit(a).await.unwrap();
        assert_eq!(r.clients, 2);
        assert!(r.writes >= 2, "each of the two in flight completes at least one timed push: {}", r.writes);
        assert_eq!(r.latency_us.len(), r.writes);
        let left: Vec<_> = std::fs::read_dir(&base).unwrap().collect();
        assert!(left.is_empty(), "the replicas' files are removed after the run: {left:?}");
        std::fs::remove_dir(&base).unwrap();
    }
}
