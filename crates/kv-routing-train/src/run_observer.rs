//! [`RunObserver`]: the bookkeeping of a training run, done after each
//! optimizer step of Burn's `Learner`: the step's loss and gradient norm read back together,
//! divergence stops the run, validation every `eval_every` steps, a `metrics.jsonl` line, the
//! progress bar, a checkpoint every `checkpoint_every` steps and at the end.
//!
//! Burn's step traits cannot return errors, so the first error is kept, Burn's interrupter
//! stops the run after the current step, and [`RunObserver::finish`] returns it. A step that
//! diverged or failed is never checkpointed: the last checkpoint stays the run's state.
//!
//! On several nodes every node keeps the same bookkeeping (validation included, so that every
//! node reads the same figures and no node waits on another's), but only rank 0 writes files
//! and shows progress: the others are [`RunObserver::follower`]s.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use burn_train::Interrupter;
use indicatif::{ProgressBar, ProgressStyle};
use kv_routing::Route;

use crate::checkpoint::{save_checkpoint, TrainState};
use crate::data::Dataset;
use crate::error::{Result, TrainError};
use crate::evaluate::validation_metrics;
use crate::learner::{AdamWAdaptor, RoutedLm, StepObserver};
use crate::run_dir::{checkpoint_dir, metrics_path, LogEntry};
use crate::train_config::TrainConfig;

/// What the run has done so far.
struct RunRecord {
    state: TrainState,
    log: Vec<LogEntry>,
    /// `metrics.jsonl`, opened by [`RunObserver::start`].
    metrics: Option<File>,
    /// When the current step began (the previous step's bookkeeping ended).
    step_start: Instant,
    error: Option<TrainError>,
}

/// The bookkeeping of a run on Burn's `Learner` (see the module docs).
pub(crate) struct RunObserver<B> {
    config: TrainConfig,
    checkpoint: PathBuf,
    metrics_path: PathBuf,
    dataset: Arc<Dataset>,
    full: Route,
    end: u64,
    interrupter: Interrupter,
    progress: ProgressBar,
    /// Whether this node writes the log and checkpoints (rank 0, or the only node).
    writes_files: bool,
    run: Mutex<RunRecord>,
    _backend: PhantomData<fn() -> B>,
}

impl<B: AutodiffBackend> RunObserver<B> {
    /// A run at `state`, up to step `end`, writing under `out_dir` (its checkpoint and
    /// `metrics.jsonl`).
    pub(crate) fn new(
        config: TrainConfig,
        state: TrainState,
        end: u64,
        out_dir: &Path,
        dataset: Arc<Dataset>,
        full: Route,
        show_progress: bool,
    ) -> Self {
        let progress = progress_bar(show_progress, state.step, end);
        Self {
            config,
            checkpoint: checkpoint_dir(out_dir),
            metrics_path: metrics_path(out_dir),
            dataset,
            full,
            end,
            interrupter: Interrupter::new(),
            progress,
            writes_files: true,
            run: Mutex::new(RunRecord {
                state,
                log: Vec::new(),
                metrics: None,
                step_start: Instant::now(),
                error: None,
            }),
            _backend: PhantomData,
        }
    }

    /// The same bookkeeping without writing any file or showing progress: a node of a run on
    /// several nodes other than rank 0.
    pub(crate) fn follower(mut self) -> Self {
        self.writes_files = false;
        self.progress = ProgressBar::hidden();
        self
    }

    /// The interrupter this observer stops the run with; Burn's training must use it.
    pub(crate) fn interrupter(&self) -> Interrupter {
        self.interrupter.clone()
    }

    /// Opens the run's log (a new run starts a new one; a resumed one keeps the checkpoint's
    /// steps) and marks the start of the first step. Called once the run is set up.
    pub(crate) fn start(&self) -> Result<()> {
        let mut run = self.lock();
        if !self.writes_files {
            run.step_start = Instant::now();
            return Ok(());
        }
        let path = &self.metrics_path;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        }
        keep_metrics_before(path, run.state.step)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| TrainError::io(path, e))?;
        run.metrics = Some(file);
        run.step_start = Instant::now();
        Ok(())
    }

    /// The state and log of the run, or its first error.
    pub(crate) fn finish(&self) -> Result<(TrainState, Vec<LogEntry>)> {
        self.progress.finish();
        let mut run = self.lock();
        if let Some(error) = run.error.take() {
            return Err(error);
        }
        Ok((run.state.clone(), std::mem::take(&mut run.log)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RunRecord> {
        // A panic while holding the lock leaves a record that is still consistent to read.
        self.run
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record_step(
        &self,
        run: &mut RunRecord,
        model: &RoutedLm<B>,
        optimizer: &AdamWAdaptor<B>,
        learning_rate: f64,
        loss: Tensor<B::InnerBackend, 1>,
        grad_norm: Tensor<B::InnerBackend, 1>,
    ) -> Result<()> {
        let step = run.state.step;
        // The step's only wait on the device: loss and gradient norm come back together.
        let [train_loss, grad_norm] = read_scalars([loss, grad_norm]);
        // Checked after the update, so a non-finite gradient norm (finite loss, but an update
        // that just wrote NaN or infinity into the weights) stops the run too, before a
        // checkpoint could save those weights.
        if !train_loss.is_finite() || !grad_norm.is_finite() {
            return Err(TrainError::Config(format!(
                "training diverged at step {step} (loss {train_loss}, gradient norm {grad_norm}); lower the learning rate"
            )));
        }
        run.state.step += 1;
        run.state.router.set_step(run.state.step);
        let config = &self.config;
        let last = run.state.step == self.end;
        let validate =
            last || (config.eval_every > 0 && run.state.step.is_multiple_of(config.eval_every));
        let val_loss = if validate {
            let metrics = validation_metrics(
                &model.transformer.valid(),
                &self.dataset,
                &self.full,
                config.eval_batches,
                config.batch_size,
            )?;
            Some(metrics.loss)
        } else {
            None
        };
        let seconds = run.step_start.elapsed().as_secs_f64();
        run.state.elapsed_seconds += seconds;
        let entry = LogEntry {
            step,
            learning_rate,
            train_loss,
            grad_norm,
            val_loss,
            tokens_per_second: (config.batch_size * config.seq_len) as f64 / seconds,
        };
        if self.writes_files {
            let metrics = run
                .metrics
                .as_mut()
                .expect("the log is opened by `start`, before Burn runs a step");
            writeln!(
                metrics,
                "{}",
                serde_json::to_string(&entry).expect("log entries serialize")
            )
            .map_err(|e| TrainError::io(&self.metrics_path, e))?;
        }
        self.progress.set_position(run.state.step);
        self.progress
            .set_message(progress_message(&entry, &run.log));
        run.log.push(entry);
        let checkpoint_due = last
            || (config.checkpoint_every > 0
                && run.state.step.is_multiple_of(config.checkpoint_every));
        if checkpoint_due && self.writes_files {
            save_checkpoint(
                &self.checkpoint,
                config,
                &run.state,
                &model.transformer,
                optimizer.to_record(),
            )?;
        }
        run.step_start = Instant::now();
        Ok(())
    }
}

impl<B: AutodiffBackend> StepObserver<B> for RunObserver<B> {
    fn after_step(
        &self,
        model: &RoutedLm<B>,
        optimizer: &AdamWAdaptor<B>,
        learning_rate: f64,
        loss: Tensor<B::InnerBackend, 1>,
        grad_norm: Tensor<B::InnerBackend, 1>,
    ) {
        let mut run = self.lock();
        if run.error.is_some() {
            return;
        }
        if let Err(error) =
            self.record_step(&mut run, model, optimizer, learning_rate, loss, grad_norm)
        {
            run.error = Some(error);
            self.interrupter.stop(Some("the run stopped on an error"));
        }
    }

    fn step_failed(&self, error: TrainError) {
        let mut run = self.lock();
        if run.error.is_none() {
            run.error = Some(error);
        }
        self.interrupter.stop(Some("the run stopped on an error"));
    }
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
