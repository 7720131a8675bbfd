//! Helpers shared by the simulator's integration tests: they run the `tetrad-sim` binary, as CI
//! and a person would, and read its output.

#![allow(dead_code)]

use std::process::{Command, Output};

/// Fault kinds kept out of the sweeps in these tests because they trigger node bugs that the
/// simulator found and that are not fixed yet (see sim/README.md, "Open findings"). Each has a
/// pinned regression seed in `regression.rs` that fails until it is fixed; drop the kind from
/// this list in the same change that fixes its bug. Empty: no open bug (`--without ""` leaves
/// nothing out).
pub const OPEN_BUG_FAULTS: &str = "";

pub fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tetrad-sim")).args(args).output().expect("tetrad-sim runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The value after `key` on the first line that starts with it.
pub fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines().find_map(|l| l.strip_prefix(key)).map(str::trim)
}

/// `seeds: N violations: V speed: Sx` from a sweep's final line.
pub fn sweep_totals(out: &str) -> Option<(u64, u64, f64)> {
    let last = out.lines().rev().find(|l| l.starts_with("seeds: "))?;
    let words: Vec<&str> = last.split_whitespace().collect();
    match words.as_slice() {
        ["seeds:", n, "violations:", v, "speed:", s, ..] => {
            Some((n.parse().ok()?, v.parse().ok()?, s.trim_end_matches('x').parse().ok()?))
        }
        _ => None,
    }
}

/// The seeds a sweep reported as failed.
pub fn failed_seeds(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.strip_prefix("seed ").and_then(|r| r.split_once(" FAILED").map(|(n, _)| n)))
        .filter_map(|s| s.parse().ok())
        .collect()
}
