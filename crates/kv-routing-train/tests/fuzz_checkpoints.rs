//! Fuzzed training checkpoints: each file of a valid checkpoint (`config.json`, `state.json`,
//! `model.mpk`, `optimizer.mpk`) is damaged at random by the loader fuzzer of kv-routing-hf
//! (`support/fuzz.rs` there: truncation, bit flips, absurd integers, removed or repeated runs,
//! JSON values of the wrong type or size, removed and duplicated keys) and the run is resumed
//! from it. Every case must resume or be a typed error: never a panic, a hang, or an allocation
//! far beyond the checkpoint's size.
//!
//! Bounded for CI; a long run:
//! `KV_FUZZ_CASES=100000 KV_FUZZ_SEED=$RANDOM cargo test --release -p kv-routing-train --test fuzz_checkpoints`.

#[allow(dead_code)]
#[path = "../../kv-routing-hf/tests/support/fuzz.rs"]
mod fuzz;
#[allow(dead_code)]
#[path = "../../../fuzz/targets.rs"]
mod targets;

use std::path::Path;

use burn_autodiff::Autodiff;
use burn_flex::{Flex, FlexDevice};
use fuzz::{mutations_for, read_files, write_damaged, Format, Outcome, PeakAllocator};
use kv_routing::MemoryBudget;
use kv_routing_train::trainer::{checkpoint_dir, train, RunOptions, Start};

#[global_allocator]
static ALLOCATOR: PeakAllocator = PeakAllocator;

type B = Autodiff<Flex>;

/// Cases per file in the normal test run.
const CASES: u32 = 1000;

/// Resumes the run under `out` (checkpointed after step 1) for one step: the configuration,
/// state, weights and optimizer moments are read, a step updates them, and the model is
/// evaluated and saved. (The run stops at step 2 whatever length a damaged config asks for.)
fn resume(out: &Path) -> bool {
    let options = RunOptions {
        show_progress: false,
        stop_at: Some(2),
        // As the CLI does (`--memory-budget available`): a damaged batch size must be refused
        // before its batch is built.
        memory_budget: MemoryBudget::bytes(1 << 30),
        ..Default::default()
    };
    train::<B>(
        targets::tiny_run(),
        Start::Resume { extend_to: None },
        out,
        options,
        &FlexDevice,
    )
    .is_ok()
}

fn fuzz_checkpoint_file(target: &str, format: Format) {
    let out = tempfile::tempdir().unwrap();
    train::<B>(
        targets::tiny_run(),
        Start::Fresh,
        out.path(),
        RunOptions {
            show_progress: false,
            stop_at: Some(1),
            ..Default::default()
        },
        &FlexDevice,
    )
    .unwrap();
    let checkpoint = checkpoint_dir(out.path());
    let files = read_files(&checkpoint);
    assert!(resume(out.path()), "the valid checkpoint resumes");
    fuzz::fuzz(target, CASES, mutations_for(format), |mutations| {
        // Each case starts from the valid checkpoint (a resume that ran rewrites it).
        std::fs::remove_dir_all(&checkpoint).ok();
        std::fs::create_dir_all(&checkpoint).unwrap();
        let input_bytes = write_damaged(&files, target, format, mutations);
        Outcome {
            input_bytes,
            loaded: resume(out.path()),
        }
    });
}

#[test]
fn damaged_checkpoint_configs_are_errors() {
    fuzz_checkpoint_file("config.json", Format::Json);
}

#[test]
fn damaged_checkpoint_states_are_errors() {
    fuzz_checkpoint_file("state.json", Format::Json);
}

#[test]
fn damaged_checkpoint_weights_are_errors() {
    fuzz_checkpoint_file("model.mpk", Format::Binary);
}

#[test]
fn damaged_optimizer_moments_are_errors() {
    fuzz_checkpoint_file("optimizer.mpk", Format::Binary);
}
