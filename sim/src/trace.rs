//! The run's trace hash: every delivered message and every client event folds into one blake3
//! hash, stamped with simulated time. Two runs of one seed must end with the same hash.

use std::sync::{Arc, Mutex};

use tetrad_node::seams::net::NodeId;

#[derive(Clone)]
pub struct Trace {
    h: Arc<Mutex<blake3::Hasher>>,
    origin: tokio::time::Instant,
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
        h.update(blake3::hash(req).as_bytes());
        h.update(blake3::hash(reply).as_bytes());
    }

    pub fn event(&self, what: &str) {
        let t = self.now_us();
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
