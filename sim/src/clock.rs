//! The simulated clock: tokio's paused time, seen by each node through its own wall-clock offset
//! and monotonic rate, and frozen while the node is paused.
//!
//! A rate change must never make the monotonic clock run backwards, so the clock is piecewise:
//! each change starts a new segment from the reading at that instant. A paused node reads the time
//! at which it was paused until it resumes; then its clocks jump to where they would have been, as
//! a process stalled by a long GC or a VM freeze observes.

use std::sync::Mutex;
use std::time::Duration;

use tetrad_node::seams::clock::{Clock, WallMillis};

/// 2026-01-01T00:00:00Z: every run starts its wall clock here, so traces do not depend on the
/// host's date.
pub const SIM_EPOCH_MS: u64 = 1_767_225_600_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClockSettings {
    /// Added to the wall clock.
    pub wall_offset_ms: i64,
    /// Monotonic clock rate error in parts per million (positive: runs fast).
    pub rate_ppm: i64,
}

#[derive(Debug)]
struct State {
    settings: ClockSettings,
    /// Simulated instant at which the current rate segment began, and the monotonic reading then.
    seg_start: tokio::time::Instant,
    seg_mono_ns: i128,
    /// While paused: the readings to return (monotonic ns, wall ms).
    frozen: Option<(i128, i64)>,
}

#[derive(Debug)]
pub struct SimClock {
    origin: tokio::time::Instant,
    state: Mutex<State>,
}

impl State {
    fn mono_ns(&self, now: tokio::time::Instant) -> i128 {
        let e = now.duration_since(self.seg_start).as_nanos() as i128;
        self.seg_mono_ns + e + e * self.settings.rate_ppm as i128 / 1_000_000
    }
}

impl SimClock {
    pub fn new(settings: ClockSettings) -> Self {
        let now = tokio::time::Instant::now();
        Self { origin: now, state: Mutex::new(State { settings, seg_start: now, seg_mono_ns: 0, frozen: None }) }
    }

    /// The simulated instant at which this clock read [`SIM_EPOCH_MS`] (before any offset).
    pub fn origin(&self) -> tokio::time::Instant {
        self.origin
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("clock lock")
    }

    /// Changes the offset and rate from now on; the monotonic clock continues from its reading.
    pub fn set(&self, s: ClockSettings) {
        let now = tokio::time::Instant::now();
        let mut st = self.lock();
        st.seg_mono_ns = st.mono_ns(now);
        st.seg_start = now;
        st.settings = s;
    }

    pub fn settings(&self) -> ClockSettings {
        self.lock().settings
    }

    /// Freezes both clocks at their current readings (the node is paused).
    pub fn freeze(&self) {
        let now = tokio::time::Instant::now();
        let wall = self.wall_at(now);
        let mut st = self.lock();
        if st.frozen.is_none() {
            st.frozen = Some((st.mono_ns(now), wall));
        }
    }

    /// Ends a freeze: the clocks jump to the time that passed meanwhile.
    pub fn thaw(&self) {
        self.lock().frozen = None;
    }

    fn wall_at(&self, now: tokio::time::Instant) -> i64 {
        let off = self.lock().settings.wall_offset_ms;
        SIM_EPOCH_MS as i64 + now.duration_since(self.origin).as_millis() as i64 + off
    }
}

impl Clock for SimClock {
    fn wall_now_ms(&self) -> WallMillis {
        if let Some((_, wall)) = self.lock().frozen {
            return wall.max(0) as u64;
        }
        self.wall_at(tokio::time::Instant::now()).max(0) as u64
    }

    fn mono_now(&self) -> Duration {
        let st = self.lock();
        let ns = match st.frozen {
            Some((mono, _)) => mono,
            None => st.mono_ns(tokio::time::Instant::now()),
        };
        Duration::from_nanos(ns.max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_rate_change_never_runs_the_monotonic_clock_backwards() {
        let c = SimClock::new(ClockSettings { wall_offset_ms: 0, rate_ppm: 100_000 });
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(c.mono_now(), Duration::from_secs(11));
        c.set(ClockSettings { wall_offset_ms: 0, rate_ppm: -100_000 });
        assert_eq!(c.mono_now(), Duration::from_secs(11));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(c.mono_now(), Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_frozen_clock_stands_still_then_jumps() {
        let c = SimClock::new(ClockSettings::default());
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.freeze();
        let wall = c.wall_now_ms();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(c.mono_now(), Duration::from_secs(1));
        assert_eq!(c.wall_now_ms(), wall);
        c.thaw();
        assert_eq!(c.mono_now(), Duration::from_secs(6));
        assert_eq!(c.wall_now_ms(), wall + 5_000);
    }
}
