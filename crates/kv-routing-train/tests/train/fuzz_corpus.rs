//! The libFuzzer targets of `fuzz/` (coverage-guided, run by hand: `fuzz/README.md`) replayed
//! in CI: every target must load its valid seed, and every input saved under
//! `fuzz/regressions/<target>/` (what a fuzzing run found, once fixed) must load or be refused
//! with a typed error, without a panic.
//!
//! `KV_FUZZ_WRITE_SEEDS=DIR` also writes each seed to `DIR/<target>/seed`: the starting corpus
//! of a fuzzing run.

#[allow(dead_code)]
#[path = "../../../../fuzz/targets.rs"]
mod targets;

// kv-routing-hf's test writers, for a GGUF seed (`gguf_writer` names its sibling
// `super::checkpoint_builder`, so both are children of this module).
#[allow(dead_code)]
#[path = "../../../kv-routing-hf/tests/support/checkpoint_builder.rs"]
mod checkpoint_builder;
#[allow(dead_code)]
#[path = "../../../kv-routing-hf/tests/support/gguf_writer.rs"]
mod gguf_writer;

use std::path::{Path, PathBuf};

use checkpoint_builder::Spec;
use gguf_writer::gguf_model;
use kv_routing_hf::gguf::GgmlType;

/// A Q8_0 Llama GGUF file with its tokenizer.
fn gguf_seed() -> Vec<u8> {
    let spec = Spec {
        intermediate: 64,
        ..Spec::llama()
    };
    gguf_model(&spec, GgmlType::Q8_0, 1).0.to_bytes()
}

fn regressions(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions")
        .join(target);
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.map(|entry| entry.unwrap().path()).collect())
        .unwrap_or_default();
    inputs.sort();
    inputs
}

#[test]
fn fuzz_targets_load_their_seeds_and_survive_saved_regressions() {
    let mut seeds = targets::seeds();
    seeds.push(("gguf", gguf_seed()));
    let write_to = std::env::var_os("KV_FUZZ_WRITE_SEEDS").map(PathBuf::from);
    for (name, run) in targets::TARGETS {
        let seed = &seeds
            .iter()
            .find(|(target, _)| *target == name)
            .unwrap_or_else(|| panic!("no seed for {name}"))
            .1;
        if let Some(dir) = &write_to {
            std::fs::create_dir_all(dir.join(name)).unwrap();
            std::fs::write(dir.join(name).join("seed"), seed).unwrap();
        }
        assert!(run(seed), "target {name} refused its own seed");
        for input in regressions(name) {
            // A typed error or a load: either returns; a panic fails the test here.
            run(&std::fs::read(&input).unwrap());
        }
        // A cut seed is an error, not a load (the target does check what it is given).
        assert!(
            !run(&seed[..seed.len() / 2]),
            "target {name} loaded half its seed"
        );
    }
}
