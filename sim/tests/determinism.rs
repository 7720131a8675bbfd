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
