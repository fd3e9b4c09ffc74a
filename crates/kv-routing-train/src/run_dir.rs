//! What a training run writes under its output directory: the checkpoint in
//! `<out_dir>/checkpoint/` ([`checkpoint_dir`], layout in the `checkpoint` module) and the log
//! in `<out_dir>/metrics.jsonl` ([`metrics_path`]), one [`LogEntry`] per optimizer step as a
//! JSON line.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Step just run (0-based).
    pub step: u64,
    /// Learning rate used.
    pub learning_rate: f64,
    /// Training loss of the step's batch.
    pub train_loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Validation loss under the full plan, when validated at this step.
    pub val_loss: Option<f64>,
    /// Training throughput over the step.
    pub tokens_per_second: f64,
}

/// The checkpoint of the run writing to `out_dir`.
pub fn checkpoint_dir(out_dir: &Path) -> PathBuf {
    out_dir.join("checkpoint")
}

/// The log of the run writing to `out_dir`.
pub fn metrics_path(out_dir: &Path) -> PathBuf {
    out_dir.join("metrics.jsonl")
}
