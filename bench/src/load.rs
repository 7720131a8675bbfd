//! The closed-loop load harness behind `push` (and, later, `record-put`): `clients` writers run
//! at once, each issuing one write, waiting for its ack, then issuing the next, until a count or a
//! duration is reached. Latency is recorded per write (hdrhistogram, microseconds) and throughput
//! is acked writes over the wall time of the timed part.
//!
//! A workload is a [`Writer`]; the harness knows nothing of tetrad or etcd. Every writer does one
//! untimed write first (it connects, finds its leader, wakes its tenant), then all writers start
//! the timed part together.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use tokio::sync::Barrier;

/// One client of a workload: it writes one thing per call and returns once that write is acked.
pub trait Writer: Send + 'static {
    /// Writes the `seq`-th item of this client. An error ends the run.
    fn write(&mut self, seq: u64) -> impl Future<Output = Result<()>> + Send;
}

/// When each client stops.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// After this many timed writes per client.
    Count(u64),
    /// Once this much time has passed since the timed part started.
    After(Duration),
}

/// What one run measured.
pub struct LoadResult {
    pub clients: usize,
    pub writes: u64,
    pub elapsed: Duration,
    /// Microseconds per acked write.
    pub latency_us: Histogram<u64>,
}

impl LoadResult {
    pub fn writes_per_s(&self) -> f64 {
        self.writes as f64 / self.elapsed.as_secs_f64()
    }

    fn quantile_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    /// One line for people.
    pub fn line(&self, what: &str) -> String {
        format!(
            "{what}: clients={} writes={} in {:.1}s = {:.0}/s, p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms",
            self.clients,
            self.writes,
            self.elapsed.as_secs_f64(),
            self.writes_per_s(),
            self.quantile_ms(0.50),
            self.quantile_ms(0.90),
            self.quantile_ms(0.99),
            self.latency_us.max() as f64 / 1000.0,
        )
    }

    /// One JSON object for scripts (`--json`).
    pub fn json(&self, peer: &str, size: usize) -> serde_json::Value {
        serde_json::json!({
            "peer": peer,
            "size": size,
            "clients": self.clients,
            "writes": self.writes,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "puts_per_s": self.writes_per_s(),
            "p50_ms": self.quantile_ms(0.50),
            "p90_ms": self.quantile_ms(0.90),
            "p99_ms": self.quantile_ms(0.99),
            "max_ms": self.latency_us.max() as f64 / 1000.0,
        })
    }
}

/// Runs every writer in its own task until `stop`, and merges what they measured.
pub async fn run<W: Writer>(writers: Vec<W>, stop: Stop) -> Result<LoadResult> {
    let clients = writers.len();
    if clients == 0 {
        bail!("a load run needs at least one client");
    }
    let barrier = std::sync::Arc::new(Barrier::new(clients + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut w) in writers.into_iter().enumerate() {
        let barrier = barrier.clone();
        tasks.spawn(async move {
            // The untimed first write; a failure still reaches the barrier so no one waits forever.
            let warm = w.write(0).await.with_context(|| format!("client {i}: first (untimed) write"));
            barrier.wait().await;
            warm?;
            let start = Instant::now();
            let mut h = Histogram::<u64>::new(3).expect("3 significant digits is a valid histogram");
            let mut seq = 1u64;
            loop {
                match stop {
                    Stop::Count(n) if seq > n => break,
                    Stop::After(d) if start.elapsed() >= d => break,
                    _ => {}
                }
                let t = Instant::now();
                w.write(seq).await.with_context(|| format!("client {i}: write {seq}"))?;
                h.record(t.elapsed().as_micros() as u64)?;
                seq += 1;
            }
            anyhow::Ok(h)
        });
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut latency_us = Histogram::<u64>::new(3)?;
    while let Some(joined) = tasks.join_next().await {
        let h = joined.context("a client task panicked")??;
        latency_us.add(&h)?;
    }
    let elapsed = start.elapsed();
    Ok(LoadResult { clients, writes: latency_us.len(), elapsed, latency_us })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counting {
        seen: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
        fail_at: Option<u64>,
    }

    impl Writer for Counting {
        async fn write(&mut self, seq: u64) -> Result<()> {
            if self.fail_at == Some(seq) {
                bail!("planted failure at {seq}");
            }
            self.seen.lock().unwrap().push(seq);
            Ok(())
        }
    }

    #[tokio::test]
    async fn every_client_writes_its_count_after_one_untimed_write() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
        let writers = (0..3).map(|_| Counting { seen: seen.clone(), fail_at: None }).collect();
        let r = run(writers, Stop::Count(5)).await.unwrap();
        assert_eq!(r.clients, 3);
        assert_eq!(r.writes, 15, "only timed writes are counted");
        let mut seqs = seen.lock().unwrap().clone();
        seqs.sort();
        let expected: Vec<u64> = (0..=5).flat_map(|s| [s, s, s]).collect();
        assert_eq!(seqs, expected);
    }

    #[tokio::test]
    async fn a_failed_write_fails_the_run() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
        let writers =
            vec![Counting { seen: seen.clone(), fail_at: None }, Counting { seen: seen.clone(), fail_at: Some(0) }];
        let e = run(writers, Stop::Count(3)).await.err().expect("the planted failure ends the run");
        assert!(format!("{e:#}").contains("planted failure at 0"), "{e:#}");
    }
}
