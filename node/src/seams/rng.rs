//! The randomness seam: one seeded generator per node.
//!
//! Production seeds it from the operating system once at start-up; the simulator seeds it from
//! the run's seed, so every random choice a node makes is replayable.

use std::sync::{Arc, Mutex};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

/// A cloneable handle to a node's seeded random generator.
#[derive(Clone, Debug)]
pub struct SeededRng {
    inner: Arc<Mutex<SmallRng>>,
}

impl SeededRng {
    pub fn from_seed(seed: u64) -> Self {
        Self { inner: Arc::new(Mutex::new(SmallRng::seed_from_u64(seed))) }
    }

    /// Seeds from the operating system: production only.
    pub fn from_os() -> Self {
        use std::io::Read;
        let mut buf = [0u8; 8];
        if let Err(e) = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)) {
            panic!("cannot read /dev/urandom to seed the node's random generator: {e}");
        }
        Self::from_seed(u64::from_le_bytes(buf))
    }

    pub fn next_u64(&self) -> u64 {
        self.inner.lock().expect("rng lock poisoned").random()
    }
}
