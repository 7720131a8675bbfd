//! Seeds that once failed, pinned; each must now hold every oracle. A node bug that the
//! simulator finds and that is not fixed yet is pinned with `still_reproduces` (listed in
//! sim/README.md, "Open findings"), so that its fix flips the test to `holds`.

mod common;

use common::{sim, stdout};

/// An open finding, pinned as it stands: the seed must still fail with this violation. When the
/// node bug is fixed this test fails, and must then become a `holds` test. (It is not hidden: the
/// bug is listed in sim/README.md "Open findings" and in the issue notes.)
#[allow(dead_code)] // No finding is open now; the next one is pinned with it.
fn still_reproduces(args: &[&str], violation: &str) {
    let o = sim(args);
    let out = stdout(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "tetrad-sim {} no longer fails: the open bug may be fixed; make this a `holds` test:\n{out}",
        args.join(" ")
    );
    assert!(out.contains(violation), "tetrad-sim {} fails differently than recorded:\n{out}", args.join(" "));
}

fn holds(args: &[&str]) {
    let o = sim(args);
    assert_eq!(o.status.code(), Some(0), "tetrad-sim {}:\n{}", args.join(" "), stdout(&o));
}

/// Found by the simulator: bit rot in one replica's chunk file stopped that replica for good. Its
/// tenant group died at its next snapshot (`TenantState::snapshot_bytes` failed on the corrupt
/// chunk and openraft treats a snapshot build error as fatal), so the replica never converged.
/// Now the snapshot builder repairs the chunk from another member of the group (`FetchChunk`,
/// verified against the hash) and rebuilds; a build that still cannot complete hands openraft a
/// snapshot that changes nothing, never an error. Reads and the scrub repair the same way.
#[test]
fn one_rotten_chunk_is_repaired_and_the_replica_converges() {
    holds(&["run", "--seed", "1", "--scenario", "disk-faults", "--mode", "sync"]);
}

/// Found by the simulator: a wiped and re-initialised node must not vote under its old identity.
/// Peers refused its requests, but a candidate counted its vote *replies*, so a candidate lacking
/// an acked write was elected with the wiped node's empty vote, and the write was lost. Replies
/// now carry the responder's incarnation and are checked against the directory (`PeerBook`).
#[test]
fn a_wiped_region_cannot_vote_away_an_acked_write() {
    holds(&["run", "--seed", "2", "--scenario", "wiped-region", "--mode", "sync"]);
}

/// Found in the simulator itself: a lost snapshot RPC waited for its whole 120 s deadline (the
/// simulated network black-holed lost messages), so a replica stayed behind past the convergence
/// bound. Production QUIC fails such a call after its 10 s idle timeout, and so does the
/// simulator now.
#[test]
fn a_lost_snapshot_does_not_stall_a_replica_for_its_whole_deadline() {
    holds(&["run", "--seed", "15", "--scenario", "mixed", "--mode", "sync"]);
}

/// Found by the simulator (issue #4): `read_durable_log` decoded the `purged` marker as
/// `Option<LogId>` while `GroupLog::purge` writes a bare `LogId`, so once a tenant's log had been
/// compacted no sealed replica could report its log, promotion found no candidate and the tenant
/// never acked again. Fixed in `node/src/raft/log_store.rs`.
#[test]
fn a_compacted_replica_can_be_promoted() {
    holds(&["run", "--seed", "7", "--mode", "async"]);
}

/// Found by the simulator (issue #4): a cut-off primary region healed after the promotion
/// renewed its lease and acked in the superseded epoch before its copy of the directory showed the
/// new one (its voters were unreachable, never sealed): two epochs acked at overlapping times. A
/// renewal now counts only once the node's directory has applied it (and so everything committed
/// before it), and the ack re-checks that the epoch is still current.
#[test]
fn a_healed_old_primary_does_not_ack_in_its_superseded_epoch() {
    holds(&["run", "--seed", "1", "--scenario", "region-partition", "--mode", "async"]);
}

/// Found by the simulator: with traffic *into* the sync leader's region cut, the followers kept
/// hearing its heartbeats and never elected another leader, while it could commit nothing (25 s
/// without an ack). A leader whose node has had no valid lease for a whole period hands the lead
/// over.
#[test]
fn a_leader_cut_off_one_way_hands_over() {
    holds(&["run", "--seed", "39"]);
}

/// Found by the simulator: a meta leader paused past the liveness period came back, judged
/// liveness from what it saw before the pause and sealed a healthy epoch through the new leader;
/// and an epoch promoted onto a node that then stopped before seeding could not be promoted from.
/// The controller now proposes only on its own replica and starts over after a long gap between
/// looks; a seal is answered from the newest epoch a node holds.
#[test]
fn a_paused_meta_leader_does_not_seal_a_healthy_epoch() {
    holds(&["run", "--seed", "2"]);
}

/// Found by the sweep once followers took over silent leaders promptly (`node/takeover.rs`):
/// after the meta group was without a quorum for longer than a liveness period (a wiped
/// primary region plus a crashed voter), every node's lease had lapsed, and each new meta or
/// tenant leader handed the lead over at once, before its first renewal could commit; the lead
/// went round forever and the tenant acked nothing after healing. A leader now hands over only
/// once it has led, unable to renew, for a whole period.
#[test]
fn a_new_leader_renews_before_it_may_hand_the_lead_over() {
    holds(&["run", "--seed", "48", "--mode", "sync"]);
}

/// Found by a sweep outside CI's seeds (issue #18): a near-sync tenant lost 9 writes acked over
/// 1.2 s. eu-central (the primary then, holding two meta voters) died with us-east-1 (a meta
/// voter), so the meta group had no quorum for about 3 s and no renewal applied. When us-east-1
/// was back, the controller judged the live learners that held the newest writes expired (it had
/// seen no renewal of theirs for a grace), did not ask them to seal, and promoted a replica that
/// lacked the writes. A node is now called expired only once the meta group has applied two of
/// the controller's own renewals since the node's last (`Observations::expired`).
#[test]
fn a_stalled_meta_group_does_not_make_live_replicas_look_expired() {
    holds(&["run", "--seed", "10179", "--scenario", "mixed", "--duration", "1m"]);
}

/// Found once the region faults aimed their extra node at the replica the lag gate counts on
/// (issue #18): counting one copy outside the primary region, the region and that copy lost
/// together took 10 writes acked over 1.6 s. The gate now waits for two copies outside the
/// region (`GATE_COPIES_OUTSIDE`).
#[test]
fn a_region_and_the_gates_copy_lost_together_stay_within_the_rpo() {
    holds(&["run", "--seed", "29", "--scenario", "region-outage", "--mode", "near-sync"]);
}

/// Found while fixing the previous two: a controller rule that measured the meta group's
/// stall by the time between its own looks saw a stall at every promotion attempt (a promotion
/// holds the controller for 1.7 s) and never failed over; the rule counts applied renewals.
#[test]
fn the_expiry_rule_counts_renewals_not_looks() {
    holds(&["run", "--seed", "21", "--scenario", "region-outage", "--mode", "near-sync"]);
}

/// Found by the 10,000-seed sweep (issue #18): a failover's `lost_writes_max` was never filled in.
/// The async tenant's epoch 2 had one voter, its founder, which was promoted and frozen before it
/// seeded the epoch; epoch 3 followed. Back, that node held epoch 1's log only, and reported a
/// tail for epoch 1, never for epoch 2, so the failover from epoch 2 waited for its one old voter
/// forever. A voter of an epoch it never started now reports that epoch's tail from the newest
/// earlier epoch it holds (the one its seal answered for).
#[test]
fn a_founder_that_never_seeded_its_epoch_still_reports_its_tail() {
    holds(&["run", "--seed", "4251", "--scenario", "region-freeze", "--duration", "1m"]);
}

/// Found by the 10,000-seed sweep (issue #18), present before this session too: an async tenant
/// lost 151 acked writes, all that its second epoch had been seeded with. The founder of a
/// promoted epoch added a learner before it had applied anything, so the log was not purged
/// first, and the learner replicated the new epoch's log alone, without the seeded state (which
/// is in no log entry). Promoted later, it founded epoch 3 without those writes. Members now join
/// a promoted epoch only once its log is purged behind a snapshot (`membership_step`).
#[test]
fn a_learner_of_a_promoted_epoch_gets_its_seeded_state() {
    holds(&["run", "--seed", "7211", "--scenario", "mixed", "--duration", "1m"]);
}
