//! The CI sweep: seeds of the default `mixed` scenario, 60 simulated seconds each, must hold every
//! oracle. Sized to a few minutes of a 2-core CI machine in a release build (see sim/README.md for
//! the measured speed); two halves, so that a 2-core runner can run them side by side.

mod common;

use common::{sim, stdout, sweep_totals, OPEN_BUG_FAULTS};

fn sweep(seeds: &str) {
    let out = stdout(&sim(&[
        "sweep",
        "--seeds",
        seeds,
        "--scenario",
        "mixed",
        "--duration",
        "60s",
        "--without",
        OPEN_BUG_FAULTS,
    ]));
    let (n, violations, speed) = sweep_totals(&out).unwrap_or_else(|| panic!("no final `seeds:` line in:\n{out}"));
    assert!(n > 0, "{out}");
    assert_eq!(violations, 0, "the sweep found violations (each failing seed prints its replay command):\n{out}");
    eprintln!("sweep {seeds}: {n} seeds, speed {speed}x");
}

#[test]
fn mixed_seeds_1_to_50_hold_every_oracle() {
    sweep("1..50");
}

#[test]
fn mixed_seeds_51_to_100_hold_every_oracle() {
    sweep("51..100");
}
