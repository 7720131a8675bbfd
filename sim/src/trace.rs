//! The run's trace hash: every delivered message and every client and fault event folds into one
//! blake3 hash, stamped with simulated time. Two runs of one seed must end with the same hash.
//!
//! A message is folded in as a digest (its length and up to [`SAMPLE_BYTES`] from each end), not
//! as its whole body: hashing every replicated WAL byte cost a noticeable share of a run, and a
//! divergence that keeps every message's length, ends and delivery instant the same for the rest
//! of a run does not happen in practice.

use std::sync::{Arc, Mutex};

use tetrad_node::seams::net::NodeId;

/// Bytes taken from each end of a message for its digest.
const SAMPLE_BYTES: usize = 256;

#[derive(Clone)]
pub struct Trace {
    h: Arc<Mutex<blake3::Hasher>>,
    origin: tokio::time::Instant,
}

fn digest(h: &mut blake3::Hasher, body: &[u8]) {
    h.update(&(body.len() as u64).to_le_bytes());
    if body.len() <= 2 * SAMPLE_BYTES {
        h.update(body);
    } else {
        h.update(&body[..SAMPLE_BYTES]);
        h.update(&body[body.len() - SAMPLE_BYTES..]);
    }
}

impl Trace {
    pub fn new() -> Self {
        Self { h: Arc::new(Mutex::new(blake3::Hasher::new())), origin: tokio::time::Instant::now() }
    }

    fn now_us(&self) -> u64 {
        tokio::time::Instant::now().duration_since(self.origin).as_micros() as u64
    }

    pub fn message(&self, from: NodeId, to: NodeId, req: &[u8], reply: &[u8]) {
        let t = self.now_us();
        let mut h = self.h.lock().expect("trace lock");
        h.update(b"msg");
        h.update(&t.to_le_bytes());
        h.update(&from.to_le_bytes());
        h.update(&to.to_le_bytes());
        digest(&mut h, req);
        digest(&mut h, reply);
    }

    pub fn event(&self, what: &str) {
        let t = self.now_us();
        tracing::info!(target: "tetrad_sim::trace", "t={:.3}s {what}", t as f64 / 1e6);
        let mut h = self.h.lock().expect("trace lock");
        h.update(b"evt");
        h.update(&t.to_le_bytes());
        h.update(what.as_bytes());
    }

    pub fn hex(&self) -> String {
        self.h.lock().expect("trace lock").clone().finalize().to_hex().to_string()
    }
}

impl Default for Trace {
    fn default() -> Self {
        Self::new()
    }
}
