//! What a training run writes under its output directory: the checkpoint in
//! `<out_dir>/checkpoint/` ([`checkpoint_dir`], layout in the `checkpoint` module) and the log
//! in `<out_dir>/metrics.jsonl` ([`metrics_path`]), one [`LogEntry`] per optimizer step as a
//! JSON line; and `<out_dir>/RESUME.md` ([`write_resume_note`]), which says how to continue
//! the run.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::train_config::TrainConfig;

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

/// The note a run leaves beside its checkpoint.
pub fn resume_note_path(out_dir: &Path) -> PathBuf {
    out_dir.join("RESUME.md")
}

/// Writes `<out_dir>/RESUME.md`: what the run is and the command that continues it from its
/// last checkpoint (bit-exact), so that a run cut off by a stopped machine says itself how to
/// go on. Rewritten at every start (the path is made absolute).
pub fn write_resume_note(out_dir: &Path, config: &TrainConfig) -> Result<()> {
    let out = std::path::absolute(out_dir).map_err(|e| TrainError::io(out_dir, e))?;
    let recipe = match &config.distill {
        Some(d) => format!(
            "distillation from {} (temperature {}, cross-entropy weight {}, full-plan weight {}, hidden-state weight {}, position focus {}); the teacher must still be there",
            d.teacher.display(),
            d.temperature,
            d.ce_weight,
            d.full_plan_weight,
            d.hidden_weight,
            d.position_focus
        ),
        None => "next-token cross-entropy".into(),
    };
    let recipe = match config.adapter_up_lr_ratio {
        Some(ratio) => {
            format!("{recipe}; sharing adapters' up matrices at {ratio} x the rate (LoRA+)")
        }
        None => recipe,
    };
    let note = format!(
        "# How to resume this run\n\n\
         {steps} steps of {batch} x {seq} tokens, p = {p}, routes drawn as `{draw}`, loss: {recipe}.\n\
         Checkpoint: `{out}/checkpoint` (every {every} steps and at the end); log: `{out}/metrics.jsonl`.\n\n\
         Continue from the last checkpoint, bit-exact with an uninterrupted run:\n\n\
         ```sh\nkv-routing train --resume --out {out}\n```\n\n\
         Add `--steps N` to lengthen the run (the rest of the learning-rate schedule stretches),\n\
         `--stop-at S` to stop at step S with a checkpoint. From Rust: `kv_routing_train::trainer::train`\n\
         with `Start::Resume {{ extend_to: None }}` and this directory.\n\n\
         On several nodes, run the same command on each with `--nodes N --node-rank R --coordinator\n\
         HOST:PORT` (or the `KV_ROUTING_NODES`, `KV_ROUTING_NODE_RANK`, `KV_ROUTING_COORDINATOR`\n\
         variables), every node reading this checkpoint; any node count continues the same run.\n",
        steps = config.steps,
        batch = config.batch_size,
        seq = config.seq_len,
        p = config.p,
        draw = config.route_draw,
        every = config.checkpoint_every,
        out = out.display(),
    );
    let path = resume_note_path(out_dir);
    std::fs::write(&path, note).map_err(|e| TrainError::io(&path, e))
}
