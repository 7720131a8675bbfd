//! Node liveness leases (DESIGN.md, "Fencing by node liveness"): pure logic over durations.
//!
//! A node renews its liveness record in the meta group. When the renewal commits, the node's
//! lease is valid until `sent_at + period`, where `sent_at` is the node's own monotonic time at
//! the moment it *sent* the renewal, so network and commit delays only shorten the lease. A
//! tenant leader acks a write only while its node's lease is valid, checked after the write is
//! durable and just before the ack. Nothing here persists an expiry as wall-clock time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::seams::clock::ClockRef;

/// The pure lease.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    valid_until: Option<Duration>,
}

impl Lease {
    /// Records a committed renewal that was sent at `sent_at` (monotonic).
    pub fn renewed(&mut self, sent_at: Duration, period: Duration) {
        let until = sent_at + period;
        self.valid_until = Some(self.valid_until.map_or(until, |u| u.max(until)));
    }

    /// Whether the lease is valid at monotonic time `now`.
    pub fn is_valid(&self, now: Duration) -> bool {
        matches!(self.valid_until, Some(u) if now < u)
    }

    pub fn remaining(&self, now: Duration) -> Duration {
        self.valid_until.map_or(Duration::ZERO, |u| u.saturating_sub(now))
    }

    /// Drops the lease at once (the meta group refused the node).
    pub fn revoke(&mut self) {
        self.valid_until = None;
    }
}

/// A node's lease, shared between the renewal loop and every tenant leader on the node.
#[derive(Clone)]
pub struct Liveness {
    lease: Arc<Mutex<Lease>>,
    clock: ClockRef,
    period: Duration,
    created: Duration,
}

impl Liveness {
    pub fn new(clock: ClockRef, period: Duration) -> Self {
        let created = clock.mono_now();
        Self { lease: Arc::new(Mutex::new(Lease::default())), clock, period, created }
    }

    /// Monotonic time to stamp a renewal with, taken just before it is sent.
    pub fn now(&self) -> Duration {
        self.clock.mono_now()
    }

    pub fn renewed(&self, sent_at: Duration) {
        self.lease.lock().expect("lease lock").renewed(sent_at, self.period);
    }

    pub fn revoke(&self) {
        self.lease.lock().expect("lease lock").revoke();
    }

    pub fn is_valid(&self) -> bool {
        let now = self.clock.mono_now();
        self.lease.lock().expect("lease lock").is_valid(now)
    }

    pub fn remaining(&self) -> Duration {
        let now = self.clock.mono_now();
        self.lease.lock().expect("lease lock").remaining(now)
    }

    /// How long the lease has been invalid (zero while it is valid; since its expiry, or since
    /// this handle was made when it never was valid).
    pub fn invalid_for(&self) -> Duration {
        let now = self.clock.mono_now();
        let l = self.lease.lock().expect("lease lock");
        if l.is_valid(now) {
            return Duration::ZERO;
        }
        now.saturating_sub(l.valid_until.unwrap_or(self.created))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = Duration::from_secs(4);

    #[test]
    fn lease_runs_from_the_send_time_not_the_commit_time() {
        let mut l = Lease::default();
        assert!(!l.is_valid(Duration::ZERO), "a node starts without a lease");
        // Sent at t=10s, committed (and observed) at t=13s: valid until 14s, not 17s.
        l.renewed(Duration::from_secs(10), P);
        assert!(l.is_valid(Duration::from_secs(13)));
        assert!(l.is_valid(Duration::from_millis(13_999)));
        assert!(!l.is_valid(Duration::from_secs(14)));
    }

    #[test]
    fn an_old_renewal_arriving_late_never_shortens_the_lease() {
        let mut l = Lease::default();
        l.renewed(Duration::from_secs(20), P);
        l.renewed(Duration::from_secs(18), P);
        assert!(l.is_valid(Duration::from_millis(23_500)));
        assert_eq!(l.remaining(Duration::from_secs(23)), Duration::from_secs(1));
    }

    #[test]
    fn revoke_ends_the_lease_at_once() {
        let mut l = Lease::default();
        l.renewed(Duration::from_secs(1), P);
        l.revoke();
        assert!(!l.is_valid(Duration::from_secs(1)));
    }
}
