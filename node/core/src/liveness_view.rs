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

/// How many of the controller's own renewals the meta group must have applied since a node's
/// last renewal was seen before that node may be called expired.
///
/// The grace (a period plus the drift bound) says that the node's lease has certainly run out,
/// which is what fencing needs. It does not say that the node is gone: while the meta group
/// cannot commit (it lost its quorum), no renewal applies, and every live node's lease runs out
/// alike. The controller's own renewal needs nothing but the meta group's quorum, so two of them
/// applied after a node's last one mean that the meta group was committing for two rounds in
/// which that node, were it alive and reachable, would have renewed too. (Seed 10179: the meta
/// group lost its quorum with eu-central and us-east-1; when us-east-1 came back, the
/// controller judged the live learners that held the newest writes expired, did not ask them to
/// seal, and promoted a replica that lacked 9 acked writes.) Counting renewals, not looks, holds
/// however rarely the controller looks. Waiting longer only delays a failover.
pub const OWN_RENEWALS_BEFORE_EXPIRY: u64 = 2;

/// What the controller has seen while this node leads the meta group.
#[derive(Clone, Debug, Default)]
pub struct Observations {
    /// Monotonic time this node became meta leader (None: not leading).
    pub leading_since: Option<Duration>,
    /// Per node: its renewal as the controller last saw it change.
    pub seen: BTreeMap<NodeId, Seen>,
    /// This node's own renewal count in the directory at the last look.
    pub own: u64,
    /// This node's own renewal count when it began leading.
    pub own_at_start: u64,
    /// When the controller last looked.
    pub last_look: Option<Duration>,
}

/// One node's renewal as the controller saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// The renewal count.
    pub count: u64,
    /// When the controller first saw that count.
    pub at: Duration,
    /// The controller's own renewal count at that moment.
    pub own: u64,
}

impl Observations {
    /// Notes the renewal counts in the directory at `now`; `me` is the controller's own node.
    pub fn observe(&mut self, counts: impl IntoIterator<Item = (NodeId, u64)>, now: Duration, me: NodeId) {
        // A controller that did not look for a long while (its node was paused, or starved) has
        // seen nothing in that time: it starts over, as a new leader would.
        if self.last_look.is_some_and(|l| now.saturating_sub(l) > MAX_LOOK_GAP) {
            *self = Observations::default();
        }
        self.last_look = Some(now);
        let counts: Vec<(NodeId, u64)> = counts.into_iter().collect();
        let own = counts.iter().find(|(n, _)| *n == me).map_or(self.own, |(_, c)| *c);
        if self.leading_since.is_none() {
            self.own_at_start = own;
        }
        let since = *self.leading_since.get_or_insert(now);
        self.own = own;
        for (n, c) in counts {
            let e = self.seen.entry(n).or_insert(Seen { count: c, at: since, own: self.own_at_start });
            if e.count != c {
                *e = Seen { count: c, at: now, own };
            }
        }
    }

    /// How long no renewal of `node` has been seen by `now` (from the leader's start when none
    /// was), and how many of the controller's own renewals applied meanwhile; None when this node
    /// is not leading.
    pub fn silence(&self, node: NodeId, now: Duration) -> Option<(Duration, u64)> {
        let since = self.leading_since?;
        let last = self.seen.get(&node).copied().unwrap_or(Seen { count: 0, at: since, own: self.own_at_start });
        Some((now.saturating_sub(last.at), self.own.saturating_sub(last.own)))
    }

    /// Whether `node`'s lease has certainly expired by `now` (no renewal seen for `grace`) and
    /// the meta group has applied [`OWN_RENEWALS_BEFORE_EXPIRY`] of the controller's own
    /// renewals since (so the silence is the node's, not the meta group's).
    pub fn expired(&self, node: NodeId, now: Duration, grace: Duration) -> bool {
        self.silence(node, now).is_some_and(|(quiet, own)| quiet > grace && own >= OWN_RENEWALS_BEFORE_EXPIRY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The controller's own node in these tests.
    const ME: NodeId = 9;

    /// One look at `t`; `own` says whether the meta group applied one more of the controller's
    /// own renewals since the last look (it renews about once a second: the tests bump it on
    /// every fifth look of 200 ms unless they stall the meta group).
    fn look(o: &mut Observations, others: &[(NodeId, u64)], t: Duration, own: bool) {
        let own_count = o.own + u64::from(own);
        o.observe(others.iter().copied().chain([(ME, own_count)]), t, ME);
    }

    /// Looks every 200 ms from `from` to `to` (inclusive), the meta group committing throughout.
    fn looks(o: &mut Observations, others: &[(NodeId, u64)], from: Duration, to: Duration) {
        let mut t = from;
        while t <= to {
            look(o, others, t, (t.as_millis() / 200).is_multiple_of(5));
            t += ms(200);
        }
    }

    #[test]
    fn a_new_leader_calls_nobody_expired_for_a_full_grace() {
        let mut o = Observations::default();
        assert!(!o.expired(1, s(1000), s(5)), "a controller that never looked judges nobody");
        looks(&mut o, &[(1, 5)], s(100), s(106));
        assert!(!o.expired(1, s(104), s(5)));
        assert!(!o.expired(2, s(105), s(5)), "an unseen node counts from the leader's start");
        assert!(o.expired(2, s(106), s(5)));
    }

    #[test]
    fn a_renewal_restarts_the_grace_from_when_it_was_seen() {
        let mut o = Observations::default();
        // The controller looks every 200 ms; node 1 renews once, at 103 s.
        looks(&mut o, &[(1, 5)], ms(100_000), ms(102_800));
        looks(&mut o, &[(1, 6)], ms(103_000), ms(107_000));
        assert!(!o.expired(1, ms(107_000), s(5)));
        looks(&mut o, &[(1, 6)], ms(107_200), ms(108_200));
        assert!(o.expired(1, ms(108_200), s(5)), "an unchanged count does not renew");
    }

    #[test]
    fn a_controller_that_was_paused_forgets_what_it_saw() {
        let mut o = Observations::default();
        look(&mut o, &[(1, 5)], s(100), true);
        look(&mut o, &[(1, 5)], s(101), true);
        look(&mut o, &[(1, 5)], s(130), true);
        assert!(!o.expired(1, s(130), s(5)), "after a pause the grace starts over");
        looks(&mut o, &[(1, 5)], s(130), s(136));
        assert!(o.expired(1, s(136), s(5)));
    }

    #[test]
    fn nobody_expires_for_a_stalled_meta_group_and_a_node_renewing_after_it_is_not_expired() {
        let mut o = Observations::default();
        // Until 110 s everyone renews about once a second.
        let mut t = ms(100_000);
        while t <= ms(110_000) {
            let c = (t.as_millis() / 1_000) as u64;
            look(&mut o, &[(1, c), (2, c)], t, (t.as_millis() / 200).is_multiple_of(5));
            t += ms(200);
        }
        let (c1, c2) = (110, 110);
        // From 110 s the meta group has no quorum: nothing is applied, not even the controller's
        // own renewals, for 6 s.
        let mut t = ms(110_200);
        while t <= ms(116_000) {
            look(&mut o, &[(1, c1), (2, c2)], t, false);
            t += ms(200);
        }
        assert!(!o.expired(1, ms(116_000), s(5)), "a stalled meta group says nothing about node 1");
        // The quorum is back: the controller's renewal applies at 116.2 s, node 1's at 116.6 s;
        // node 2 stays silent and is called expired once two own renewals applied after its last.
        look(&mut o, &[(1, c1), (2, c2)], ms(116_200), true);
        look(&mut o, &[(1, c1), (2, c2)], ms(116_400), false);
        assert!(!o.expired(2, ms(116_400), s(5)), "one own renewal since the stall is not enough");
        look(&mut o, &[(1, c1 + 1), (2, c2)], ms(116_600), false);
        looks(&mut o, &[(1, c1 + 1), (2, c2)], ms(116_800), ms(118_000));
        assert!(!o.expired(1, ms(118_000), s(5)));
        assert!(o.expired(2, ms(118_000), s(5)));
    }

    #[test]
    fn the_rule_counts_own_renewals_not_looks() {
        // The controller looks rarely (a promotion held it for 1.7 s at a time, seed 21), while
        // the meta group commits: a dead node is still called expired once its grace is over.
        let mut o = Observations::default();
        let mut t = ms(100_000);
        while t <= ms(110_000) {
            look(&mut o, &[(1, 5)], t, true);
            t += ms(900);
        }
        assert!(o.expired(1, ms(110_000), s(5)));
    }

    proptest::proptest! {
        /// Whatever the renewals and looks (200-400 ms apart, so no look gap resets the view), a
        /// node is never called expired before a grace has passed since its last renewal was
        /// seen, nor before two of the controller's own renewals applied since.
        #[test]
        fn expiry_needs_the_grace_and_two_own_renewals(
            steps in proptest::collection::vec((0u64..400, proptest::bool::ANY, proptest::bool::ANY), 1..80),
        ) {
            let mut o = Observations::default();
            let (mut t, mut n1) = (ms(100_000), 0u64);
            let mut last: Option<(Duration, u64)> = None;
            for (dt, renew, own) in steps {
                t += ms(dt);
                n1 += u64::from(renew);
                look(&mut o, &[(1, n1)], t, own);
                if renew || last.is_none() {
                    last = Some((t, o.own));
                }
                let (at, own_then) = last.expect("set at the first look");
                if o.expired(1, t, s(5)) {
                    proptest::prop_assert!(t - at > s(5));
                    proptest::prop_assert!(o.own - own_then >= OWN_RENEWALS_BEFORE_EXPIRY);
                }
            }
        }
    }
}
