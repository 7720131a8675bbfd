//! Seeds that once failed, pinned: each must now hold every oracle. The first two reproduce node
//! bugs that the simulator found and that are still open (sim/README.md, "Open findings"); they
//! fail until those bugs are fixed.

mod common;

use common::{sim, stdout};

fn holds(args: &[&str]) {
    let o = sim(args);
    assert_eq!(o.status.code(), Some(0), "tetrad-sim {}:\n{}", args.join(" "), stdout(&o));
}

/// Bit rot in one replica's chunk file must not stop that replica: its tenant group died at its
/// next snapshot (`TenantState::snapshot_bytes` fails on the corrupt chunk and openraft treats a
/// snapshot build error as fatal), so the replica never converged.
#[test]
fn one_rotten_chunk_does_not_stop_a_replica() {
    holds(&["run", "--seed", "1", "--scenario", "disk-faults"]);
}

/// A wiped and re-initialised node must not vote under its old identity: peers refuse its
/// requests, but a candidate counted its vote *replies*, so a candidate lacking an acked write
/// was elected with the wiped node's empty vote, and the write was lost.
#[test]
fn a_wiped_region_does_not_vote_away_an_acked_write() {
    holds(&["run", "--seed", "2", "--scenario", "wiped-region"]);
}

/// Found in the simulator itself: a lost snapshot RPC waited for its whole 120 s deadline (the
/// simulated network black-holed lost messages), so a replica stayed behind past the convergence
/// bound. Production QUIC fails such a call after its 10 s idle timeout, and so does the
/// simulator now.
#[test]
fn a_lost_snapshot_does_not_stall_a_replica_for_its_whole_deadline() {
    holds(&["run", "--seed", "15", "--scenario", "mixed"]);
}
