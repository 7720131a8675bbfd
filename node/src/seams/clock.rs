//! The clock seam: wall-clock time for timestamps and monotonic time for liveness.
//!
//! Tokio's timers (`tokio::time::sleep`) are the scheduling clock and are paused in the simulator.
//! This seam adds what the simulator must be able to skew per node: the wall clock (which may be
//! offset) and the monotonic clock used for liveness validity (which may run at a drifting rate).

use std::sync::Arc;
use std::time::Duration;

/// Milliseconds since the Unix epoch, UTC. Only for timestamps that people and point-in-time
/// recovery read; never for deciding safety.
pub type WallMillis = u64;

/// A node's view of time.
pub trait Clock: Send + Sync + 'static {
    /// Wall-clock time in milliseconds since the Unix epoch.
    fn wall_now_ms(&self) -> WallMillis;
    /// Monotonic time since an arbitrary per-node origin. Never goes backwards.
    fn mono_now(&self) -> Duration;
}

pub type ClockRef = Arc<dyn Clock>;

/// The production clock: the operating system's clocks.
#[derive(Debug)]
pub struct SystemClock {
    origin: std::time::Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        // The one place in node code that reads the OS monotonic clock.
        Self { origin: std::time::Instant::now() }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn wall_now_ms(&self) -> WallMillis {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }

    fn mono_now(&self) -> Duration {
        self.origin.elapsed()
    }
}
