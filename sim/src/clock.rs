//! The simulated clock: tokio's paused time, seen by each node through its own wall-clock
//! offset and monotonic rate.

use std::sync::Mutex;
use std::time::Duration;

use tetrad_node::seams::clock::{Clock, WallMillis};

/// 2026-01-01T00:00:00Z: every run starts its wall clock here, so traces do not depend on the
/// host's date.
pub const SIM_EPOCH_MS: u64 = 1_767_225_600_000;

#[derive(Debug)]
pub struct SimClock {
    origin: tokio::time::Instant,
    settings: Mutex<ClockSettings>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ClockSettings {
    /// Added to the wall clock.
    pub wall_offset_ms: i64,
    /// Monotonic clock rate error in parts per million (positive: runs fast).
    pub rate_ppm: i64,
}

impl SimClock {
    pub fn new(settings: ClockSettings) -> Self {
        Self { origin: tokio::time::Instant::now(), settings: Mutex::new(settings) }
    }

    pub fn set(&self, s: ClockSettings) {
        *self.settings.lock().expect("clock lock") = s;
    }

    fn elapsed(&self) -> Duration {
        tokio::time::Instant::now().duration_since(self.origin)
    }
}

impl Clock for SimClock {
    fn wall_now_ms(&self) -> WallMillis {
        let s = *self.settings.lock().expect("clock lock");
        let t = SIM_EPOCH_MS as i64 + self.elapsed().as_millis() as i64 + s.wall_offset_ms;
        t.max(0) as u64
    }

    fn mono_now(&self) -> Duration {
        let s = *self.settings.lock().expect("clock lock");
        let e = self.elapsed().as_nanos() as i128;
        let skewed = e + e * s.rate_ppm as i128 / 1_000_000;
        Duration::from_nanos(skewed.max(0) as u64)
    }
}
