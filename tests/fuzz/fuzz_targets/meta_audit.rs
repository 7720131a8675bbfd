#![no_main]
// The target's body is shared with the stable regression test (node/tests/fuzz_corpus.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| tetrad_node::fuzzing::meta_audit(data));
