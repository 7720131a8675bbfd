//! The near-sync lag gate (DESIGN.md, "Lag gate"): a leader's book of acked writes that are not
//! yet durable outside its region, how long the oldest of them has been exposed, whether the
//! gate lets the next ack through, and how a degraded tenant's state moves back to healthy.
//!
//! The node's shell (`node/src/node/writes.rs`) reads the group's replication progress and its
//! monotonic clock, and waits (back pressure) while the gate is closed.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::directory::{AckMark, EventKind, Mode, OnLag, TenantHealth, TenantRecord};
use crate::NodeId;

/// What a leader knows of its own acks: the acked writes not yet durable outside its region (for
/// the lag gate), and the newest ack (reported to the meta group for loss accounting).
#[derive(Clone, Debug, Default)]
pub struct AckBook {
    /// The Raft term this book belongs to; a new term starts a new book.
    pub term: u64,
    /// Entries up to here were acked before this book began, at times it does not know: the gate
    /// treats them as older than any target until they are durable elsewhere.
    pub floor: u64,
    /// (index, monotonic ack time) of acked writes, oldest first.
    pub pending: VecDeque<(u64, Duration)>,
    pub newest: Option<AckMark>,
    pub reported: Option<AckMark>,
    pub first_ack_reported: bool,
}

/// How long the oldest acked write that is not durable in another region has been waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exposure {
    None,
    Since(Duration),
    /// Acked before this leader's book began: older than anything.
    Unknown,
}

impl AckBook {
    pub fn begin(term: u64, last_index: u64) -> Self {
        AckBook { term, floor: last_index, ..Default::default() }
    }

    /// Starts a new book when the leader's term is no longer this book's (everything up to
    /// `last_index` then counts as acked at unknown times).
    pub fn follow_term(&mut self, term: u64, last_index: u64) {
        if self.term != term {
            *self = AckBook::begin(term, last_index);
        }
    }

    /// Forgets the acks that are now durable at `replicated` (the highest index some replica in
    /// another region has flushed) and says what is still exposed at `now`.
    pub fn exposure(&mut self, replicated: u64, now: Duration) -> Exposure {
        while self.pending.front().is_some_and(|(i, _)| *i <= replicated) {
            self.pending.pop_front();
        }
        if self.floor > replicated {
            return Exposure::Unknown;
        }
        match self.pending.front() {
            None => Exposure::None,
            Some((_, at)) => Exposure::Since(now.saturating_sub(*at)),
        }
    }

    /// Notes an ack of the entry at `index`, given at `now`.
    pub fn acked(&mut self, index: u64, now: Duration, mark: AckMark) {
        self.pending.push_back((index, now));
        if self.newest.is_none_or(|n| n.position() < mark.position()) {
            self.newest = Some(mark);
        }
    }
}

/// How many replicas outside the leader's region must have an acked write durable before the
/// lag gate counts it as safe from the loss of the leader's region.
///
/// Two, so that the near-sync claim holds within the whole fault budget: one region lost *plus*
/// one more node anywhere. Counting one copy, the region and that copy's node can be lost
/// together (the copy the gate counted on is gone, and promotion picks a survivor that lacks
/// it: writes acked over more than `rpo_target` disappear; sim seed 29, region-outage,
/// near-sync). With two copies outside the region, one survives any such pair, and promotion
/// picks the most up-to-date survivor. A tenant with a single replica outside its leader's
/// region (residency in two regions, or right after a failover before placement has added
/// learners) can only count that one: its claim covers the loss of a region, not of a region
/// plus that replica.
pub const GATE_COPIES_OUTSIDE: usize = 2;

/// The highest log index that `copies` of the members outside `region` have made durable (all
/// of them, when fewer are outside), from the leader's matched index per member (None: nothing
/// matched yet); 0 when no member is outside. Members whose region is unknown do not count.
/// This is the one rule of "durable in another region": keep it here, in one place.
pub fn replicated_outside<'a>(
    matched: &BTreeMap<NodeId, Option<u64>>,
    region: &str,
    region_of: impl Fn(NodeId) -> Option<&'a str>,
    copies: usize,
) -> u64 {
    let mut flushed: Vec<u64> = matched
        .iter()
        .filter(|(m, _)| region_of(**m).is_some_and(|r| r != region))
        .map(|(_, i)| i.unwrap_or(0))
        .collect();
    flushed.sort_unstable_by(|a, b| b.cmp(a));
    copies.min(flushed.len()).checked_sub(1).and_then(|k| flushed.get(k)).copied().unwrap_or(0)
}

/// Whether the gate lets an ack through: nothing exposed longer than `rpo`.
pub fn gate_open(exposure: Exposure, rpo: Duration) -> bool {
    match exposure {
        Exposure::None => true,
        Exposure::Since(d) => d <= rpo,
        Exposure::Unknown => false,
    }
}

/// Whether a write of this tenant waits at the gate at all: only a healthy near-sync tenant's
/// (a degraded one acks as async until it is healthy again).
pub fn gate_applies(rec: &TenantRecord) -> bool {
    rec.spec.mode == Mode::NearSync && rec.state == TenantHealth::Healthy
}

/// What the leader does with an ack at the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateVerdict {
    /// The gate is open: ack.
    Open,
    /// Closed, and the tenant says `on_lag = degrade`: commit the switch to degraded, then ack.
    Degrade,
    /// Closed: wait for replication (back pressure).
    Hold,
}

pub fn verdict(exposure: Exposure, rpo: Duration, on_lag: OnLag) -> GateVerdict {
    if gate_open(exposure, rpo) {
        return GateVerdict::Open;
    }
    match on_lag {
        OnLag::Degrade => GateVerdict::Degrade,
        OnLag::Block => GateVerdict::Hold,
    }
}

/// A degraded tenant's next state on its leader: catching-up once the exposure is back within
/// the target, healthy (with a `healthy` event) once every acked write is durable in another
/// region. None: no change (a healthy tenant never moves here; degrading is the gate's).
pub fn recovery_step(
    state: TenantHealth,
    exposure: Exposure,
    rpo: Duration,
) -> Option<(TenantHealth, Option<EventKind>)> {
    if state == TenantHealth::Healthy {
        return None;
    }
    match (state, exposure) {
        (_, Exposure::None) => Some((TenantHealth::Healthy, Some(EventKind::Healthy))),
        (TenantHealth::Degraded, e) if gate_open(e, rpo) => Some((TenantHealth::CatchingUp, None)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_gate_closes_when_the_oldest_exposed_ack_is_older_than_the_target() {
        let mut b = AckBook::begin(1, 10);
        assert_eq!(b.exposure(10, ms(0)), Exposure::None);
        b.acked(11, ms(100), AckMark::default());
        b.acked(12, ms(300), AckMark::default());
        assert_eq!(b.exposure(10, ms(1100)), Exposure::Since(ms(1000)));
        assert!(gate_open(b.exposure(10, ms(1100)), ms(1000)), "exactly at the target is still within it");
        assert!(!gate_open(b.exposure(10, ms(1101)), ms(1000)));
        // Entry 11 is durable elsewhere now: the oldest exposed is 12.
        assert_eq!(b.exposure(11, ms(1101)), Exposure::Since(ms(801)));
        assert_eq!(b.exposure(12, ms(1101)), Exposure::None);
    }

    #[test]
    fn acks_from_before_the_book_block_until_durable_elsewhere() {
        let mut b = AckBook::begin(2, 50);
        assert_eq!(b.exposure(49, ms(0)), Exposure::Unknown);
        assert!(!gate_open(Exposure::Unknown, Duration::from_secs(3600)));
        assert_eq!(b.exposure(50, ms(0)), Exposure::None);
    }

    #[test]
    fn a_new_term_starts_a_new_book() {
        let mut b = AckBook::begin(2, 50);
        b.acked(51, ms(5), AckMark { term: 2, index: 51, writes: 1, proposed_at_ms: 0 });
        b.follow_term(2, 60);
        assert_eq!((b.floor, b.pending.len()), (50, 1), "same term: the same book");
        b.follow_term(3, 60);
        assert_eq!((b.term, b.floor, b.pending.len(), b.newest), (3, 60, 0, None));
    }

    #[test]
    fn only_members_outside_the_region_count_as_replicated() {
        let region = |n: NodeId| match n {
            1..=3 => Some("eu"),
            4 | 5 => Some("us"),
            _ => None,
        };
        let matched = BTreeMap::from([(1, Some(90)), (2, Some(80)), (4, Some(40)), (5, None), (9, Some(99))]);
        assert_eq!(replicated_outside(&matched, "eu", region, 1), 40);
        assert_eq!(replicated_outside(&matched, "us", region, 1), 90);
        assert_eq!(replicated_outside(&BTreeMap::new(), "eu", region, 1), 0);
        // Two copies: the second highest outside the region counts.
        assert_eq!(replicated_outside(&matched, "us", region, 2), 80);
        assert_eq!(replicated_outside(&matched, "eu", region, 2), 0, "4 has 40, 5 nothing yet");
        let one_outside = BTreeMap::from([(1, Some(90)), (4, Some(40))]);
        assert_eq!(replicated_outside(&one_outside, "eu", region, 2), 40, "a single copy outside is all there is");
    }

    #[test]
    fn two_copies_outside_survive_the_region_plus_any_one_node() {
        // Whatever the gate counts as durable elsewhere is still held by some replica outside
        // the region after any one of them is lost too.
        let region = |n: NodeId| {
            Some(if n <= 3 {
                "eu"
            } else if n <= 5 {
                "us"
            } else {
                "ap"
            })
        };
        let matched = BTreeMap::from([(1, Some(99)), (4, Some(70)), (5, Some(55)), (6, Some(61))]);
        let safe = replicated_outside(&matched, "eu", region, GATE_COPIES_OUTSIDE);
        assert_eq!(safe, 61);
        for lost in [4, 5, 6] {
            let left = matched.iter().filter(|(m, _)| **m > 3 && **m != lost).filter_map(|(_, i)| *i).max();
            assert!(left.is_some_and(|l| l >= safe), "losing {lost} too loses index {safe}");
        }
    }

    #[test]
    fn verdicts_and_recovery_steps() {
        let rpo = ms(1000);
        assert_eq!(verdict(Exposure::Since(ms(1000)), rpo, OnLag::Block), GateVerdict::Open);
        assert_eq!(verdict(Exposure::Since(ms(1001)), rpo, OnLag::Block), GateVerdict::Hold);
        assert_eq!(verdict(Exposure::Unknown, rpo, OnLag::Degrade), GateVerdict::Degrade);
        use TenantHealth::*;
        assert_eq!(recovery_step(Healthy, Exposure::Unknown, rpo), None);
        assert_eq!(recovery_step(Degraded, Exposure::Since(ms(5)), rpo), Some((CatchingUp, None)));
        assert_eq!(recovery_step(Degraded, Exposure::Since(ms(5000)), rpo), None);
        assert_eq!(recovery_step(CatchingUp, Exposure::Since(ms(5)), rpo), None);
        assert_eq!(recovery_step(CatchingUp, Exposure::None, rpo), Some((Healthy, Some(EventKind::Healthy))));
        assert_eq!(recovery_step(Degraded, Exposure::None, rpo), Some((Healthy, Some(EventKind::Healthy))));
    }

    proptest::proptest! {
        /// The gate is closed exactly when the oldest acked write that no other region holds was
        /// acked more than `rpo` ago (or before the book began).
        #[test]
        fn closed_iff_the_oldest_exposed_write_is_older_than_the_target(
            floor in 0u64..20,
            gaps in proptest::collection::vec((1u64..4, 0u64..800), 0..20),
            replicated in 0u64..80,
            rpo_ms in 0u64..3000,
            near_edge in proptest::option::of(-1i64..=1),
            later in 0u64..3000,
        ) {
            let mut b = AckBook::begin(1, floor);
            let (mut index, mut at) = (floor, 0u64);
            let mut acks = vec![];
            for (di, dt) in gaps {
                index += di;
                at += dt;
                b.acked(index, ms(at), AckMark { term: 1, index, writes: 0, proposed_at_ms: 0 });
                acks.push((index, at));
            }
            let now = at + later;
            let oldest_exposed = acks.iter().find(|(i, _)| *i > replicated).map(|(_, t)| *t);
            // Often put the target right at the oldest exposed write's age, or one ms off it.
            let rpo_ms = match (near_edge, oldest_exposed) {
                (Some(d), Some(t)) => (now - t).saturating_add_signed(d),
                _ => rpo_ms,
            };
            let open = gate_open(b.exposure(replicated, ms(now)), ms(rpo_ms));
            let expected_closed = floor > replicated || oldest_exposed.is_some_and(|t| now - t > rpo_ms);
            proptest::prop_assert_eq!(open, !expected_closed);
        }
    }
}
