//! The failover controller's view of node liveness (DESIGN.md, "Fencing by node liveness"): which
//! renewals the meta leader has seen and when, and whether a node's lease has certainly expired.
//!
//! Liveness here is judged on the meta leader's monotonic clock, from the moment it *saw* a
//! renewal applied (never earlier than the renewal was sent), plus the period and the drift
//! bound. A newly elected meta leader has seen nothing yet, so it waits one full period plus the
//! drift bound before it may call anyone expired.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::NodeId;

/// A gap between two looks longer than this resets what the controller has seen.
pub const MAX_LOOK_GAP: Duration = Duration::from_secs(1);

/// What the controller has seen while this node leads the meta group.
#[derive(Clone, Debug, Default)]
pub struct Observations {
    /// Monotonic time this node became meta leader (None: not leading).
    pub leading_since: Option<Duration>,
    /// Per node: the renewal count last seen and when it was first seen.
    pub seen: BTreeMap<NodeId, (u64, Duration)>,
    /// When the controller last looked.
    pub last_look: Option<Duration>,
}

impl Observations {
    /// Notes the renewal counts in the directory at `now`.
    pub fn observe(&mut self, counts: impl IntoIterator<Item = (NodeId, u64)>, now: Duration) {
        // A controller that did not look for a long while (its node was paused, or starved) has
        // seen nothing in that time: it starts over, as a new leader would.
        if self.last_look.is_some_and(|l| now.saturating_sub(l) > MAX_LOOK_GAP) {
            *self = Observations::default();
        }
        self.last_look = Some(now);
        let since = *self.leading_since.get_or_insert(now);
        for (n, c) in counts {
            let e = self.seen.entry(n).or_insert((c, since));
            if e.0 != c {
                *e = (c, now);
            }
        }
    }

    /// Whether `node`'s lease has certainly expired by `now`: no renewal seen for `grace`.
    pub fn expired(&self, node: NodeId, now: Duration, grace: Duration) -> bool {
        let Some(since) = self.leading_since else { return false };
        let last = self.seen.get(&node).map(|(_, at)| *at).unwrap_or(since);
        now.saturating_sub(last) > grace
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_new_leader_calls_nobody_expired_for_a_full_grace() {
        let mut o = Observations::default();
        assert!(!o.expired(1, s(1000), s(5)), "a controller that never looked judges nobody");
        o.observe([(1, 5)], s(100));
        assert!(!o.expired(1, s(104), s(5)));
        assert!(!o.expired(2, s(105), s(5)), "an unseen node counts from the leader's start");
        assert!(o.expired(2, s(106), s(5)));
    }

    #[test]
    fn a_renewal_restarts_the_grace_from_when_it_was_seen() {
        let ms = Duration::from_millis;
        let mut o = Observations::default();
        // The controller looks every 200 ms; node 1 renews once, at 103 s.
        let look = |o: &mut Observations, from: u64, to: u64, count: u64| {
            let mut t = from;
            while t <= to {
                o.observe([(1, count)], ms(t));
                t += 200;
            }
        };
        look(&mut o, 100_000, 102_800, 5);
        look(&mut o, 103_000, 107_000, 6);
        assert!(!o.expired(1, ms(107_000), s(5)));
        look(&mut o, 107_200, 108_200, 6);
        assert!(o.expired(1, ms(108_200), s(5)), "an unchanged count does not renew");
    }

    #[test]
    fn a_controller_that_was_paused_forgets_what_it_saw() {
        let mut o = Observations::default();
        o.observe([(1, 5)], s(100));
        o.observe([(1, 5)], s(101));
        o.observe([(1, 5)], s(130));
        assert!(!o.expired(1, s(130), s(5)), "after a pause the grace starts over");
        assert!(o.expired(1, s(136), s(5)));
    }
}
