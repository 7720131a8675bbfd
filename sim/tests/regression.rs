//! Seeds that once failed, pinned. The first reproduces a node
//! bug that the simulator found and that is still open (sim/README.md, "Open findings") and
//! assert that they still do, so a fix flips them; the rest must hold every oracle.

mod common;

use common::{sim, stdout};

/// An open finding, pinned as it stands: the seed must still fail with this violation. When the
/// node bug is fixed this test fails, and must then become a `holds` test. (It is not hidden: the
/// bug is listed in sim/README.md "Open findings" and in the issue notes.)
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

/// Bit rot in one replica's chunk file must not stop that replica: its tenant group died at its
/// next snapshot (`TenantState::snapshot_bytes` fails on the corrupt chunk and openraft treats a
/// snapshot build error as fatal), so the replica never converged.
#[test]
fn open_bug_one_rotten_chunk_stops_a_replica() {
    still_reproduces(&["run", "--seed", "1", "--scenario", "disk-faults"], "convergence: replicas of t/t1/1 differ");
}

/// Found by the simulator: a wiped and re-initialised node must not vote under its old identity.
/// Peers refused its requests, but a candidate counted its vote *replies*, so a candidate lacking
/// an acked write was elected with the wiped node's empty vote, and the write was lost. Replies
/// now carry the responder's incarnation and are checked against the directory (`PeerBook`).
#[test]
fn a_wiped_region_cannot_vote_away_an_acked_write() {
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
