//! A training run: AdamW with warmup + cosine schedule and global-norm clipping, one
//! stochastic route per step, periodic validation and checkpoints, exact resume; fresh, resumed,
//! or fine-tuned from a checkpoint.
//!
//! The steps run on `burn-train`'s `Learner` ([`crate::learner`]), on one device or
//! data-parallel on several ([`train_on`]); the run's bookkeeping (log, validation, checkpoints,
//! divergence) happens after each optimizer step, in `crate::run_observer`. What a run writes
//! where is [`crate::run_dir`].
//!
//! A run is the writer of its checkpoint: resuming first finishes a save that was killed
//! between its two renames ([`StagedDir::recover`]). The checkpoint a run is initialized from
//! belongs to another run, which may be saving into it: it is only read
//! ([`StagedDir::committed`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn_train::logger::InMemoryMetricLogger;
use kv_routing::{CachePlan, MemoryBudget};
use kv_routing_hf::{tokenizer_file, StagedDir};

use crate::checkpoint::{load_model, load_optimizer, load_state, TrainState};
use crate::data::{DataSource, Dataset};
use crate::error::{Result, TrainError};
use crate::evaluate::validation_metrics;
use crate::learner::{LearnerSetup, RoutedLmTraining, SilentRenderer, StepLayout};
use crate::nodes::{tokens_digest, weights_digest, NodeConfig, NodeGroup, RunFingerprint};
use crate::run_observer::RunObserver;
use crate::starting_point::{load_starting_point, StartingPoint};
use crate::train_config::TrainConfig;

use crate::run_dir::write_resume_note;
// A run's output layout has a module of its own (the run observer writes it too, and must not
// depend on this one); named here too, beside `train`, where callers look for it.
pub use crate::run_dir::{checkpoint_dir, LogEntry};

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
    /// On several nodes, the seconds of `seconds` this node spent summing gradients with the
    /// others (waiting for the slowest included); `None` on one node.
    pub node_exchange_seconds: Option<f64>,
}

/// How a call to [`train`] behaves, besides what the run is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunOptions {
    /// Show a progress bar.
    pub show_progress: bool,
    /// Stop (with a checkpoint) once this many steps of the run are done, to resume later;
    /// `None` runs to `config.steps`. The schedule still spans `config.steps`.
    pub stop_at: Option<u64>,
    /// Limit on a training step's activations, checked before the first batch is built.
    /// Default: unlimited (only sizes that overflow are refused).
    pub memory_budget: MemoryBudget,
    /// Train as one node of a run on several ([`crate::nodes`]); `None`: the only node. Every
    /// node runs this function with the same run; only rank 0 writes the log and checkpoints
    /// (the others read the checkpoint to resume, and must see the same files).
    pub nodes: Option<NodeConfig>,
}

/// Step 0 of a new run: a router for the run's `p` and seed.
fn fresh_state(config: &TrainConfig) -> Result<TrainState> {
    Ok(TrainState {
        step: 0,
        router: config.router()?,
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
            *tokenizer = tokenizer_file(path);
        }
    }
    data
}

/// Trains per `config` from `start` on `device`, checkpointing under `out_dir`.
pub fn train<B: AutodiffBackend>(
    config: TrainConfig,
    start: Start,
    out_dir: &Path,
    options: RunOptions,
    device: &B::Device,
) -> Result<TrainSummary> {
    train_on::<B>(
        config,
        start,
        out_dir,
        options,
        std::slice::from_ref(device),
    )
}

/// Trains per `config` from `start`, data-parallel on `devices` (Burn's multi-device strategy:
/// each device runs `batch_size / devices.len()` sequences of every step, the first sums the
/// gradients and steps the optimizer), checkpointing under `out_dir`.
///
/// The run is the same whatever the devices: each step reads the same sequences under the
/// same route and takes the gradient of their mean loss, so a run can be resumed on another
/// number of devices. `batch_size` must divide evenly over them.
pub fn train_on<B: AutodiffBackend>(
    config: TrainConfig,
    start: Start,
    out_dir: &Path,
    options: RunOptions,
    devices: &[B::Device],
) -> Result<TrainSummary> {
    let device = devices
        .first()
        .ok_or_else(|| TrainError::Config("training needs at least one device".into()))?;
    let checkpoint = checkpoint_dir(out_dir);
    if let Some(nodes) = &options.nodes {
        nodes.validate()?;
    }
    let rank = options.nodes.as_ref().map_or(0, |n| n.rank);
    let (state, model, config) = match &start {
        Start::Fresh => {
            config.validate()?;
            let model = config.model.init_seeded::<B>(config.init_seed, device)?;
            (fresh_state(&config)?, model, config)
        }
        Start::Resume { extend_to } => {
            // Finishing an interrupted save is the writer's job: rank 0's.
            if rank == 0 {
                StagedDir::recover(&checkpoint)?;
            }
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
            let StartingPoint {
                source,
                config: mut model_config,
                base,
                mut model,
            } = load_starting_point::<B>(source, device)?;
            // Sharing adapters asked for are added to a starting point without them; one that
            // has them keeps its own (training them further), and asking for others is an error.
            match (&config.model.sharing_adapter, &model_config.sharing_adapter) {
                (Some(asked), None) => {
                    model = model.with_sharing_adapters(asked)?;
                    model_config.sharing_adapter = Some(asked.clone());
                }
                (Some(asked), Some(has)) if asked != has => {
                    return Err(TrainError::Config(format!(
                        "{} already has sharing adapters of rank {} (alpha {:?}); asked for rank {} (alpha {:?})",
                        source.display(),
                        has.rank,
                        has.alpha,
                        asked.rank,
                        asked.alpha
                    )))
                }
                _ => {}
            }
            let config = TrainConfig {
                model: model_config,
                base,
                data: tokenized_with_tokenizer_of(&config.data, &source),
                ..config
            };
            config.validate()?;
            (fresh_state(&config)?, model, config)
        }
    };
    // A model with sharing adapters trains only them: what the full plan computes stays the
    // starting model's, bit for bit.
    let model = match config.model.sharing_adapter {
        Some(_) => model.with_only_sharing_adapters_trainable()?,
        None => model,
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
    let dataset = Arc::new(Dataset::open(&config.data, config.seq_len)?);
    let optimizer = match start {
        Start::Resume { .. } => Some(load_optimizer(&checkpoint, &model, device)?),
        _ => None,
    };

    let full = CachePlan::full(config.model.n_layers)?.route();
    let end = options
        .stop_at
        .map_or(config.steps, |s| s.min(config.steps));
    let first_step = state.step;
    let run_start = Instant::now();
    if first_step >= end {
        // Nothing left to train: the run's result is the checkpoint's model.
        let final_val_loss = validation_metrics(
            &model.valid(),
            &dataset,
            &full,
            config.eval_batches,
            config.batch_size,
        )?
        .loss;
        return Ok(TrainSummary {
            config,
            steps_run: 0,
            log: Vec::new(),
            final_val_loss,
            seconds: run_start.elapsed().as_secs_f64(),
            node_exchange_seconds: None,
        });
    }
    let group = match &options.nodes {
        Some(nodes) if nodes.nodes > 1 => {
            // Before waiting for anyone: a batch that cannot split is this node's error alone.
            StepLayout::split_over_nodes(
                config.batch_size,
                nodes.nodes,
                nodes.rank,
                devices.len(),
                1,
            )?;
            let mut fingerprint = RunFingerprint::of_run(&config, first_step)
                .with("end_step", end)
                .with("weights", format!("{:016x}", weights_digest(&model)));
            if let Some(tokens) = dataset.text() {
                fingerprint = fingerprint.with("text", format!("{:016x}", tokens_digest(tokens)));
            }
            Some(Arc::new(NodeGroup::join(nodes, first_step, &fingerprint)?))
        }
        _ => None,
    };
    let mut observer = RunObserver::<B>::new(
        config.clone(),
        state,
        end,
        out_dir,
        dataset.clone(),
        full,
        options.show_progress,
    );
    if rank != 0 {
        observer = observer.follower();
    }
    let observer = Arc::new(observer);
    let mut setup = LearnerSetup::new(devices.to_vec())
        .with_steps(first_step..end)
        .with_dataset(dataset)
        .observed_by(observer.clone())
        .without_validation();
    if let Some(group) = &group {
        setup = setup.with_nodes(group.clone());
    }
    let mut run = RoutedLmTraining::new(&config, model, setup, out_dir)?;
    if let Some(record) = optimizer {
        run.learner.load_optim(record);
    }
    // The run's own log, progress bar and checkpoints replace Burn's files and renderer.
    run.training = run
        .training
        .renderer(SilentRenderer)
        .with_application_logger(None)
        .with_metric_logger(InMemoryMetricLogger::new())
        .with_interrupter(observer.interrupter());
    // Only once the run is set up (a layout or vocabulary error leaves the log as it was).
    observer.start()?;
    if rank == 0 {
        write_resume_note(out_dir, &config)?;
    }
    run.launch();
    let (state, log) = observer.finish()?;
    if let Some(group) = &group {
        // Rank 0 gets here after its last checkpoint: a node that returns knows it is written.
        group.barrier()?;
    }
    let final_val_loss = log
        .iter()
        .rev()
        .find_map(|e| e.val_loss)
        .expect("the last step validates");
    Ok(TrainSummary {
        steps_run: state.step - first_step,
        log,
        final_val_loss,
        seconds: run_start.elapsed().as_secs_f64(),
        node_exchange_seconds: group.as_ref().map(|g| g.exchange_seconds()),
        config,
    })
}
