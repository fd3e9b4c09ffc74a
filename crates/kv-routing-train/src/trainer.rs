//! The training loop: AdamW with warmup + cosine schedule and global-norm clipping, one
//! stochastic route per step, periodic validation and checkpoints, exact resume.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use kv_routing::{CachePlan, MemoryBudget, RoutedTransformer, StochasticRouter};
use kv_routing_hf::{is_pretrained, load_pretrained, LoadOptions};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{load_model, load_optimizer, load_state, save_checkpoint, TrainState};
use crate::data::{DataSource, Dataset, Split};
use crate::error::{Result, TrainError};
use crate::evaluate::validation_metrics;
use crate::grad_clip::clip_global_norm;
use crate::loss::mean_loss;
use crate::pretrained::PretrainedBase;
use crate::train_config::TrainConfig;

/// How a run begins.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// New weights from `config.init_seed`.
    Fresh,
    /// Continue the run checkpointed under `<out_dir>/checkpoint` exactly as it was configured
    /// (its saved config is used and `config` is ignored), or, with `extend_to`, lengthened to
    /// that many steps (the cosine schedule is stretched to the new length; shortening a run is
    /// an error: stop early with [`RunOptions::stop_at`] instead).
    Resume {
        /// New total length of the run, at least its saved `steps`.
        extend_to: Option<u64>,
    },
    /// Fine-tune: weights from this checkpoint (a training checkpoint or a Hugging Face
    /// checkpoint directory), fresh optimizer and schedule, the new `p`. The checkpoint's model
    /// configuration replaces `config.model`. From a Hugging Face checkpoint with a
    /// `tokenizer.json`, a text corpus without a tokenizer is tokenized with it.
    InitFrom(PathBuf),
}

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

/// What a call to [`train`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSummary {
    /// The configuration the run used.
    pub config: TrainConfig,
    /// Steps run by this call.
    pub steps_run: u64,
    /// Every step's log entry.
    pub log: Vec<LogEntry>,
    /// Validation loss (full plan) at the end.
    pub final_val_loss: f64,
    /// Wall-clock seconds of this call's steps.
    pub seconds: f64,
}

/// Where a run writes: `<out_dir>/checkpoint/` and `<out_dir>/metrics.jsonl`.
pub fn checkpoint_dir(out_dir: &Path) -> PathBuf {
    out_dir.join("checkpoint")
}

/// How a call to [`train`] behaves, besides what the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunOptions {
    /// Show a progress bar.
    pub show_progress: bool,
    /// Stop (with a checkpoint) once this many steps of the run are done, to resume later;
    /// `None` runs to `config.steps`. The schedule still spans `config.steps`.
    pub stop_at: Option<u64>,
    /// Limit on a training step's activations, checked before the first batch is built.
    /// Default: unlimited (only sizes that overflow are refused).
    pub memory_budget: MemoryBudget,
}

/// Step 0 of a new run: a router for the run's `p` and seed.
fn fresh_state(config: &TrainConfig) -> Result<TrainState> {
    Ok(TrainState {
        step: 0,
        router: StochasticRouter::new(config.model.n_layers, config.p, config.route_seed)?,
        elapsed_seconds: 0.0,
    })
}

/// A text corpus without a tokenizer is tokenized with the tokenizer of the checkpoint at
/// `path` (a Hugging Face checkpoint or GGUF file, or a run that started from one), when it has
/// one.
fn tokenized_with_tokenizer_of(data: &DataSource, path: &Path) -> DataSource {
    let mut data = data.clone();
    if let DataSource::TextFile { tokenizer, .. } = &mut data {
        if tokenizer.is_none() {
            *tokenizer = crate::pretrained::tokenizer_file(path);
        }
    }
    data
}

/// Trains per `config` from `start`, checkpointing under `out_dir`.
pub fn train<B: AutodiffBackend>(
    config: TrainConfig,
    start: Start,
    out_dir: &Path,
    options: RunOptions,
    device: &B::Device,
) -> Result<TrainSummary> {
    let checkpoint = checkpoint_dir(out_dir);
    let (mut state, mut model, config) = match &start {
        Start::Fresh => {
            config.validate()?;
            let model = config.model.init_seeded::<B>(config.init_seed, device)?;
            (fresh_state(&config)?, model, config)
        }
        Start::Resume { extend_to } => {
            let (mut saved, model) = load_model::<B>(&checkpoint, device)?;
            if let Some(steps) = *extend_to {
                if steps < saved.steps {
                    return Err(TrainError::Config(format!(
                        "the run in {} is {} steps long; it can be extended, not shortened to {steps} (stop early with --stop-at)",
                        out_dir.display(),
                        saved.steps
                    )));
                }
                saved.steps = steps;
            }
            (load_state(&checkpoint)?, model, saved)
        }
        Start::InitFrom(source) => {
            let (model_config, base, model) = if is_pretrained(source) {
                let loaded = load_pretrained::<B>(source, &LoadOptions::default(), device)?;
                let base = PretrainedBase {
                    source: std::path::absolute(source).map_err(|e| TrainError::io(source, e))?,
                    hf_config: loaded.hf_config,
                };
                (loaded.model_config, Some(base), loaded.model)
            } else {
                let (saved, model) = load_model::<B>(source, device)?;
                (saved.model, saved.base, model)
            };
            let config = TrainConfig {
                model: model_config,
                base,
                data: tokenized_with_tokenizer_of(&config.data, source),
                ..config
            };
            config.validate()?;
            (fresh_state(&config)?, model, config)
        }
    };
    if state.router.step() != state.step {
        return Err(TrainError::checkpoint(
            &checkpoint,
            "router step and run step disagree",
        ));
    }
    // Checked before the first route is drawn: a damaged state.json with a router of 2^53
    // layers (found by the checkpoint fuzz test) would otherwise allocate its route.
    if state.router.n_layers() != config.model.n_layers {
        return Err(TrainError::checkpoint(
            &checkpoint,
            format!(
                "the router of state.json routes {} layers, the model has {}",
                state.router.n_layers(),
                config.model.n_layers
            ),
        ));
    }
    // Before any batch exists: a batch size the memory cannot hold (a damaged checkpoint's
    // 2^53, found by the checkpoint fuzz test, aborted the process on allocation) is an error
    // that gives the bytes it needs.
    options.memory_budget.check(
        &format!(
            "a training step of {} sequences x {} tokens (activations kept for the backward pass)",
            config.batch_size, config.seq_len
        ),
        model.min_forward_bytes(config.batch_size, config.seq_len, true),
    )?;
    let dataset = Dataset::open(&config.data, config.seq_len)?;
    let mut optimizer = AdamWConfig::new()
        .with_weight_decay(config.weight_decay as f32)
        .init::<B, RoutedTransformer<B>>();
    if matches!(start, Start::Resume { .. }) {
        optimizer = load_optimizer(&checkpoint, optimizer, &model, device)?;
    }
    std::fs::create_dir_all(out_dir).map_err(|e| TrainError::io(out_dir, e))?;
    let metrics_path = out_dir.join("metrics.jsonl");
    // A new run (step 0) starts a new log; a resumed one keeps the checkpoint's steps.
    keep_metrics_before(&metrics_path, state.step)?;
    let mut metrics = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| TrainError::io(&metrics_path, e))?;

    let full = CachePlan::full(config.model.n_layers)?.route();
    let schedule = config.schedule();
    let tokens_per_step = (config.batch_size * config.seq_len) as f64;
    let end = options
        .stop_at
        .map_or(config.steps, |s| s.min(config.steps));
    let progress = progress_bar(options.show_progress, state.step, end);
    let first_step = state.step;
    let mut log = Vec::new();
    let run_start = Instant::now();
    while state.step < end {
        let step = state.step;
        let step_start = Instant::now();
        let route = state.router.next_route();
        let batch = dataset.batch(
            Split::Train,
            step * config.batch_size as u64,
            config.batch_size,
        );
        let loss = mean_loss(model.forward_tokens(&batch.inputs, &route)?, &batch.targets)?;
        let loss_value = loss.clone().inner();
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        let grad_norm = clip_global_norm(&model, &mut grads, config.grad_clip);
        let learning_rate = schedule.at(step);
        model = optimizer.step(learning_rate, model, grads);
        // The step's only wait on the device: loss and gradient norm come back together, after
        // the whole step is queued. A diverged step returns before anything is saved, so the
        // last checkpoint stays the run's state.
        let [train_loss, grad_norm] = read_scalars([loss_value, grad_norm]);
        // Checked after the update was queued, so a non-finite gradient norm (finite loss, but
        // an update that just wrote NaN or infinity into the weights) must stop the run too,
        // before a checkpoint could save those weights.
        if !train_loss.is_finite() || !grad_norm.is_finite() {
            return Err(TrainError::Config(format!(
                "training diverged at step {step} (loss {train_loss}, gradient norm {grad_norm}); lower the learning rate"
            )));
        }
        state.step += 1;
        state.elapsed_seconds += step_start.elapsed().as_secs_f64();

        let last = state.step == end;
        let validate = last || (config.eval_every > 0 && state.step % config.eval_every == 0);
        let val_loss = if validate {
            let metrics = validation_metrics(
                &model.valid(),
                &dataset,
                &full,
                config.eval_batches,
                config.batch_size,
            )?;
            Some(metrics.loss)
        } else {
            None
        };
        let entry = LogEntry {
            step,
            learning_rate,
            train_loss,
            grad_norm,
            val_loss,
            tokens_per_second: tokens_per_step / step_start.elapsed().as_secs_f64(),
        };
        writeln!(
            metrics,
            "{}",
            serde_json::to_string(&entry).expect("log entries serialize")
        )
        .map_err(|e| TrainError::io(&metrics_path, e))?;
        progress.set_position(state.step);
        progress.set_message(progress_message(&entry, &log));
        log.push(entry);
        if last || (config.checkpoint_every > 0 && state.step % config.checkpoint_every == 0) {
            save_checkpoint(&checkpoint, &config, &state, &model, &optimizer)?;
        }
    }
    progress.finish();
    let final_val_loss = match log.iter().rev().find_map(|e| e.val_loss) {
        Some(loss) => loss,
        None => {
            validation_metrics(
                &model.valid(),
                &dataset,
                &full,
                config.eval_batches,
                config.batch_size,
            )?
            .loss
        }
    };
    Ok(TrainSummary {
        steps_run: state.step - first_step,
        log,
        final_val_loss,
        seconds: run_start.elapsed().as_secs_f64(),
        config,
    })
}

/// Cuts `metrics.jsonl` back to the steps before `next_step`, the checkpoint's (all of it for a
/// new run). A run stopped or killed after its last checkpoint logged steps that the resumed
/// run trains again (and a kill can leave half a line); without this they would be logged
/// twice (found by `crates/kv-routing-cli/tests/crash_safety.rs`). Rewritten through a
/// temporary file and a rename, so a kill here leaves the old log or the new one.
fn keep_metrics_before(path: &Path, next_step: u64) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(TrainError::io(path, e)),
    };
    let kept: String = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<LogEntry>(line).is_ok_and(|entry| entry.step < next_step)
        })
        .flat_map(|line| [line, "\n"])
        .collect();
    if kept.len() == text.len() {
        return Ok(());
    }
    let staged = path.with_extension("jsonl.tmp");
    let mut file = std::fs::File::create(&staged).map_err(|e| TrainError::io(&staged, e))?;
    file.write_all(kept.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| TrainError::io(&staged, e))?;
    std::fs::rename(&staged, path).map_err(|e| TrainError::io(path, e))
}

fn progress_bar(show: bool, position: u64, total: u64) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total).with_position(position);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar
}

fn progress_message(entry: &LogEntry, log: &[LogEntry]) -> String {
    // Smooth over the last 20 steps: single batches are noisy.
    let recent: Vec<&LogEntry> = log
        .iter()
        .rev()
        .take(19)
        .chain(std::iter::once(entry))
        .collect();
    let loss = recent.iter().map(|e| e.train_loss).sum::<f64>() / recent.len() as f64;
    let speed = recent.iter().map(|e| e.tokens_per_second).sum::<f64>() / recent.len() as f64;
    let val = log
        .iter()
        .chain(std::iter::once(entry))
        .rev()
        .find_map(|e| e.val_loss)
        .map(|v| format!(" val {v:.3}"))
        .unwrap_or_default();
    format!("loss {loss:.3}{val} | {speed:.0} tok/s")
}

/// Reads one-element tensors back from the device in a single transfer.
fn read_scalars<B: Backend, const N: usize>(scalars: [Tensor<B, 1>; N]) -> [f64; N] {
    let values = Tensor::cat(scalars.to_vec(), 0)
        .into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .expect("a float tensor converts to f64");
    std::array::from_fn(|i| values[i])
}
