//! The clock seam: wall-clock time for timestamps, monotonic time for liveness, and the one door
//! to the scheduling clock.
//!
//! Tokio's timers (`tokio::time::sleep`) are the scheduling clock and are paused in the simulator.
//! This seam adds what the simulator must be able to skew per node: the wall clock (which may be
//! offset) and the monotonic clock used for liveness validity (which may run at a drifting rate).
//! Code that must read the scheduling clock itself (a deadline compared with openraft's timers)
//! calls [`scheduling_now`]; nothing outside `seams/` calls `Instant::now` (checked by
//! `node/tests/seam_check.rs`).

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

/// Now on the scheduling clock: tokio's, which drives openraft's timers and its leader lease, and
/// which the simulator pauses and advances for the whole cluster at once.
///
/// For instants that must agree with those timers: when a follower last renewed a leader's lease
/// (openraft measures that lease in tokio time), when a deferred snapshot build may be retried,
/// how long a start-up step took. Not for liveness or timestamps: a node's own monotonic and wall
/// clocks are [`Clock`]'s, which the simulator can skew per node while tokio's clock stays shared.
pub fn scheduling_now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

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
