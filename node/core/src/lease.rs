//! A node's liveness lease as arithmetic over monotonic durations (DESIGN.md, "Fencing by node
//! liveness").
//!
//! A node renews its liveness record in the meta group. When the renewal commits, the node's
//! lease is valid until `sent_at + period`, where `sent_at` is the node's own monotonic time at
//! the moment it *sent* the renewal, so network and commit delays only shorten the lease. A
//! tenant leader acks a write only while its node's lease is valid, checked after the write is
//! durable and just before the ack. Nothing here persists an expiry as wall-clock time, and
//! nothing reads a clock: the node's shared handle (`node/src/meta/liveness.rs`) passes `now`.

use std::time::Duration;

/// The lease: valid until a monotonic instant, or not at all.
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

    /// How long the lease has been invalid at `now`: zero while it is valid; since its expiry, or
    /// since `created` (when the holder began) if it never was valid.
    pub fn invalid_for(&self, now: Duration, created: Duration) -> Duration {
        if self.is_valid(now) {
            return Duration::ZERO;
        }
        now.saturating_sub(self.valid_until.unwrap_or(created))
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

    #[test]
    fn invalid_for_counts_from_the_expiry_or_from_the_start() {
        let s = Duration::from_secs;
        let mut l = Lease::default();
        assert_eq!(l.invalid_for(s(7), s(2)), s(5), "never valid: since the holder began");
        l.renewed(s(10), P);
        assert_eq!(l.invalid_for(s(13), s(2)), Duration::ZERO);
        assert_eq!(l.invalid_for(s(17), s(2)), s(3), "since the expiry at 14 s");
    }

    proptest::proptest! {
        /// Validity is exactly "before the newest renewal's send time plus the period".
        #[test]
        fn valid_iff_before_the_latest_send_plus_period(
            sends in proptest::collection::vec(0u64..100_000, 1..8),
            now in 0u64..120_000,
        ) {
            let ms = Duration::from_millis;
            let mut l = Lease::default();
            for s in &sends {
                l.renewed(ms(*s), P);
            }
            let until = ms(*sends.iter().max().expect("non-empty")) + P;
            proptest::prop_assert_eq!(l.is_valid(ms(now)), ms(now) < until);
            proptest::prop_assert_eq!(l.remaining(ms(now)), until.saturating_sub(ms(now)));
        }
    }
}
