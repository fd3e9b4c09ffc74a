//! The training tests on flex and ndarray, in one test binary: each binary monomorphizes the
//! routed model, the trainer and Burn's autodiff for its backends again, which cost CI 2 to 6
//! minutes of CPU per file when these were four binaries (`fuzz_checkpoints` stays apart: its
//! allocator measures the process's peak, which other tests running beside it would move).
//!
//! - [`runs`]: whole runs (loss, determinism, checkpoints, resume, fine-tuning, errors);
//! - [`distillation`]: self-distillation and plan-drawn routes;
//! - [`learner`]: runs on `burn-train`'s engine against the reference loop;
//! - [`fuzz_corpus`]: the libFuzzer targets' seeds and saved inputs replayed.

mod distillation;
mod fuzz_corpus;
mod learner;
mod runs;
