//! Same seed, same trace: in two separate processes, and twice in one process
//! (`--check-determinism`); different seeds, different traces.

mod common;

use common::{field, sim, stdout};

const SHORT: &[&str] = &["--duration", "20s", "--scenario", "mixed"];

fn trace_hash(seed: u64) -> String {
    let seed = seed.to_string();
    let mut args = vec!["run", "--seed", &seed];
    args.extend_from_slice(SHORT);
    let out = stdout(&sim(&args));
    field(&out, "trace-hash:").unwrap_or_else(|| panic!("no trace-hash line in:\n{out}")).to_string()
}

#[test]
fn one_seed_gives_one_trace_hash_in_two_processes() {
    for seed in [5, 11] {
        let (a, b) = (trace_hash(seed), trace_hash(seed));
        assert_eq!(a, b, "seed {seed} gave two different traces in two processes");
        assert_eq!(a.len(), 64, "a blake3 hex digest: {a}");
    }
}

#[test]
fn different_seeds_give_different_trace_hashes() {
    assert_ne!(trace_hash(5), trace_hash(6));
}

#[test]
fn check_determinism_runs_a_seed_twice_in_one_process() {
    let mut args = vec!["run", "--seed", "9", "--check-determinism"];
    args.extend_from_slice(SHORT);
    let out = stdout(&sim(&args));
    assert!(out.contains("determinism: same trace hash on a second run"), "{out}");
    assert!(!out.contains("VIOLATION: determinism"), "{out}");
}

/// The watchdog that turns a livelocked seed into a failure (sim/src/main.rs): a task that never
/// waits, from 2 s of simulated time on, stops simulated time; the run must fail within the
/// (shortened) limit and print the seed's replay command instead of hanging CI.
#[test]
fn a_livelocked_seed_fails_instead_of_hanging() {
    let started = std::time::Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tetrad-sim"))
        .args(["sweep", "--seeds", "3..4", "--scenario", "calm"])
        .env("TETRAD_SIM_SPIN_AT_MS", "2000")
        .env("TETRAD_SIM_LIVELOCK_SECS", "2")
        .output()
        .expect("tetrad-sim runs");
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "a livelock must fail the sweep:\n{text}");
    assert!(text.contains("seed 3 FAILED (livelock)"), "{text}");
    assert!(text.contains("replay: cargo run --release -p tetrad-sim"), "{text}");
    assert!(started.elapsed().as_secs() < 60, "the watchdog took {:?}", started.elapsed());
}
