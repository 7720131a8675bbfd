//! Every planted bug must be caught: a sweep with the bug planted stops at a failing seed within
//! 200 seeds (exit 1), and that same seed passes without the bug, so it was the bug that failed
//! it. Runs only in a build with the `planted-bugs` feature:
//! `cargo nextest run --release -p tetrad-sim --features planted-bugs --test planted`.

#![cfg(feature = "planted-bugs")]

mod common;

use common::{failed_seeds, sim, stdout, OPEN_BUG_FAULTS};

/// Catches `bug` within 200 seeds, then shows that the catching seed holds without it.
/// Fault kinds that only fail on still-open node bugs stay out (see `common`).
fn caught(bug: &str) {
    let without = OPEN_BUG_FAULTS;
    let swept = sim(&["sweep", "--seeds", "1..200", "--plant", bug, "--stop-at-first", "--without", without]);
    let out = stdout(&swept);
    assert_eq!(swept.status.code(), Some(1), "{bug} was not caught within 200 seeds:\n{out}");
    let seed = *failed_seeds(&out).first().unwrap_or_else(|| panic!("no failing seed printed:\n{out}"));
    eprintln!("{bug}: caught at seed {seed}");
    let seed = seed.to_string();
    let control = sim(&["run", "--seed", &seed, "--without", without]);
    assert_eq!(
        control.status.code(),
        Some(0),
        "seed {seed} fails without {bug} too, so the catch proves nothing:\n{}",
        stdout(&control)
    );
}

#[test]
fn ack_before_commit_is_caught() {
    caught("ack-before-commit");
}

#[test]
fn ack_before_fsync_is_caught() {
    caught("ack-before-fsync");
}

#[test]
fn wiped_node_votes_is_caught() {
    caught("wiped-node-votes");
}
