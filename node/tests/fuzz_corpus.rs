//! The fuzz corpus as regression tests on the stable toolchain: every committed input under
//! `tests/fuzz/corpus/<target>/` goes through its target (`tetrad_node::fuzzing`), which panics
//! on a decoder bug, and every target must have a corpus, so a target without one (or a corpus
//! directory that moved) fails here. The seed inputs the code generates are run as well; with
//! `TETRAD_FUZZ_WRITE_SEEDS=1` they are (re)written into the corpus (ARCHITECTURE.md, "Fuzzing").

use std::path::PathBuf;

use tetrad_node::fuzzing::{seeds, TARGETS};

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz/corpus").join(target)
}

#[test]
fn every_target_has_a_fuzz_target_file_and_a_seed() {
    let seeds = seeds();
    for (name, _) in TARGETS {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/fuzz/fuzz_targets/{name}.rs"));
        assert!(file.is_file(), "target {name} has no cargo-fuzz target at {}", file.display());
        assert!(seeds.iter().any(|(s, inputs)| s == name && !inputs.is_empty()), "target {name} has no seed");
    }
    for (name, _) in &seeds {
        assert!(TARGETS.iter().any(|(t, _)| t == name), "seeds for an unknown target {name}");
    }
}

#[test]
fn generated_seeds_pass_their_targets() {
    let write = std::env::var_os("TETRAD_FUZZ_WRITE_SEEDS").is_some_and(|v| v == "1");
    for (name, inputs) in seeds() {
        let (_, run) = TARGETS.iter().find(|(t, _)| *t == name).expect("a known target");
        let dir = corpus_dir(name);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
        }
        for (i, input) in inputs.iter().enumerate() {
            run(input);
            if write {
                std::fs::write(dir.join(format!("seed-{i:02}")), input).unwrap();
            }
        }
    }
}

#[test]
fn the_committed_corpus_passes_every_target() {
    for (name, run) in TARGETS {
        let dir = corpus_dir(name);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus of {name} at {}: {e}", dir.display()));
        let mut n = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            if !path.is_file() {
                continue;
            }
            let input = std::fs::read(&path).unwrap();
            let result = std::panic::catch_unwind(|| run(&input));
            assert!(result.is_ok(), "target {name} panicked on corpus input {}", path.display());
            n += 1;
        }
        assert!(n > 0, "the corpus of {name} at {} is empty", dir.display());
    }
}
