//! Checkpoints: a directory holding everything needed to resume a run exactly.
//!
//! ```text
//! <dir>/config.json     TrainConfig (model config included)
//! <dir>/state.json      TrainState: the next step and the router (seed, p, step)
//! <dir>/model.mpk       model weights (Burn named MessagePack, full precision)
//! <dir>/optimizer.mpk   AdamW moments
//! <dir>/tokenizer.json  (and the other tokenizer files) when the run started from a Hugging
//!                       Face checkpoint that has them
//! ```
//!
//! A checkpoint is written through a [`StagedDir`] (`<dir>.tmp`, flushed to disk, renamed into
//! place), so a save killed at any point leaves the previous checkpoint or the new one, complete.
//! The loaders here read exactly the directory they are given and never rename: a save killed
//! between its two renames is finished by a writer (a resumed run, or the next save), while
//! readers read `<dir>.old` through [`StagedDir::committed`].
//!
//! The model half of the format — `config.json`'s model and routing, and `model.mpk` — is read
//! by kv-routing-hf ([`kv_routing_hf::run_checkpoint`]), so that inference loads a checkpoint
//! without this crate; [`load_model`] reads the weights through it.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use burn::module::{Module, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::record::{AdaptorRecord, AdaptorRecordV1};
use burn::optim::{AdamW, Optimizer};
use burn::record::Recorder;
use burn::tensor::backend::{AutodiffBackend, Backend};
use kv_routing::{RoutedTransformer, StochasticRouter};
use kv_routing_hf::record::{checked_record_file, decode_without_panics, parameters, recorder};
use kv_routing_hf::run_checkpoint::{load_run_weights, MODEL_RECORD_FILE};
use kv_routing_hf::{copy_tokenizer_files, HfError, StagedDir, CONFIG_FILE, TOKENIZER_FILE};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::train_config::TrainConfig;

const CONFIG: &str = CONFIG_FILE;
const STATE: &str = "state.json";
const MODEL: &str = MODEL_RECORD_FILE;
const OPTIMIZER: &str = "optimizer.mpk";

/// Progress of a run besides weights and optimizer moments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// The next step to run.
    pub step: u64,
    /// The router, whose step counter equals `step`.
    pub router: StochasticRouter,
    /// Training time so far, seconds.
    pub elapsed_seconds: f64,
}

/// The AdamW moments of a run, per parameter id (the record of Burn's optimizer adaptor, the
/// same whatever module the adaptor optimizes).
pub type OptimizerRecord<B> = <OptimizerAdaptor<AdamW, RoutedTransformer<B>, B> as Optimizer<
    RoutedTransformer<B>,
    B,
>>::Record;

/// Writes a checkpoint of a training run into `dir` (replacing one that is there).
pub fn save_checkpoint<B: AutodiffBackend>(
    dir: &Path,
    config: &TrainConfig,
    state: &TrainState,
    model: &RoutedTransformer<B>,
    optimizer: OptimizerRecord<B>,
) -> Result<()> {
    if model.sharing_adapters_merged() {
        // Its record would hold the merged weights with nothing saying so: loaded again, the
        // full plan would silently run the sharing plans' weights.
        return Err(TrainError::Config(
            "the model's sharing adapters are merged into its weights; save the unmerged model"
                .into(),
        ));
    }
    let staged = StagedDir::begin(dir)?;
    let staging = staged.path();
    write_json(&staging.join(CONFIG), config)?;
    write_json(&staging.join(STATE), state)?;
    model
        .clone()
        .save_file(staging.join(MODEL), &recorder())
        .map_err(|e| TrainError::io(staging.join(MODEL), e))?;
    Recorder::<B>::record(&recorder(), optimizer, staging.join(OPTIMIZER))
        .map_err(|e| TrainError::io(staging.join(OPTIMIZER), e))?;
    if let Some(base) = &config.base {
        // The previous checkpoint's copy when it has one (rebuilding a GGUF file's
        // tokenizer.json on every save would parse its whole vocabulary again), else the
        // base's files (a directory, or the tokenizer of a GGUF file).
        let from = if dir.join(TOKENIZER_FILE).is_file() || !base.source.exists() {
            dir
        } else {
            base.source.as_path()
        };
        copy_tokenizer_files(from, staging)?;
    }
    staged.commit()?;
    Ok(())
}

/// Reads the run configuration of a checkpoint.
pub fn load_config(dir: &Path) -> Result<TrainConfig> {
    check_dir(dir)?;
    let config: TrainConfig = read_json(dir, CONFIG)?;
    config
        .validate()
        .map_err(|e| TrainError::checkpoint(dir, format!("{CONFIG}: {e}")))?;
    Ok(config)
}

/// Reads the run state of a checkpoint.
pub fn load_state(dir: &Path) -> Result<TrainState> {
    read_json(dir, STATE)
}

/// Loads a checkpoint's model with its run configuration (to resume or fine-tune from it; to
/// evaluate or serve it, [`kv_routing_hf::load_model_dir`] needs only the model half).
pub fn load_model<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(TrainConfig, RoutedTransformer<B>)> {
    let config = load_config(dir)?;
    let model = load_run_weights::<B>(dir, &config.model, device).map_err(checkpoint_error)?;
    Ok((config, model))
}

/// Loads a checkpoint's optimizer moments, after checking that every moment belongs to a
/// parameter of `model` and has its shape.
pub fn load_optimizer<B: AutodiffBackend>(
    dir: &Path,
    model: &RoutedTransformer<B>,
    device: &B::Device,
) -> Result<OptimizerRecord<B>> {
    let path = checked_record_file(dir, OPTIMIZER).map_err(checkpoint_error)?;
    let record: OptimizerRecord<B> = decode_without_panics(dir, OPTIMIZER, || {
        Recorder::<B>::load(&recorder(), path, device)
    })
    .map_err(checkpoint_error)?;
    if let Some(mismatch) = moment_mismatch(&record, model) {
        return Err(TrainError::checkpoint(
            dir,
            format!("{OPTIMIZER} does not match {MODEL}: {mismatch}"),
        ));
    }
    Ok(record)
}

/// The first AdamW moment in `record` that has no parameter of `model` or not its shape,
/// described.
///
/// Burn's optimizer takes the moments of a record as they are: a moment of the wrong shape
/// (found by the checkpoint fuzz test's long run) panicked in the first step.
fn moment_mismatch<'a, B: AutodiffBackend, M: Module<B>>(
    record: impl IntoIterator<Item = (&'a ParamId, &'a AdaptorRecord<AdamW, B>)>,
    model: &M,
) -> Option<String> {
    let parameters: HashMap<_, _> = parameters::<B, M>(model)
        .into_iter()
        .map(|parameter| (parameter.id, (parameter.path, parameter.shape)))
        .collect();
    for (id, moments) in record {
        let Some((path, shape)) = parameters.get(id) else {
            return Some(format!(
                "moments for a parameter the model does not have ({id})"
            ));
        };
        let AdaptorRecord::V1(moments) = moments;
        macro_rules! shapes {
            ($($rank:ident),*) => {
                match moments {
                    $(AdaptorRecordV1::$rank(state) => {
                        let momentum = &state.momentum;
                        std::iter::once(momentum.moment_1.dims().to_vec())
                            .chain(std::iter::once(momentum.moment_2.dims().to_vec()))
                            .chain(momentum.max_moment_2.iter().map(|m| m.dims().to_vec()))
                            .collect::<Vec<_>>()
                    })*
                }
            };
        }
        let found = shapes!(Rank0, Rank1, Rank2, Rank3, Rank4, Rank5, Rank6, Rank7, Rank8);
        if let Some(wrong) = found.iter().find(|f| *f != shape) {
            return Some(format!(
                "the moments of parameter `{path}` have shape {wrong:?}, the parameter {shape:?}"
            ));
        }
    }
    None
}

/// A checkpoint error of kv-routing-hf's readers as this crate reports checkpoint errors.
fn checkpoint_error(error: HfError) -> TrainError {
    match error {
        HfError::Checkpoint { path, message } => TrainError::Checkpoint { path, message },
        other => other.into(),
    }
}

fn check_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    // Never recovered here: these loaders also serve readers, which must not rename.
    match StagedDir::committed(dir)? {
        previous if previous != dir => Err(TrainError::checkpoint(
            dir,
            format!(
                "a save into it was interrupted between its renames: the checkpoint is in {} (resuming the run puts it back)",
                previous.display()
            ),
        )),
        _ => Err(TrainError::checkpoint(dir, "no such checkpoint directory")),
    }
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let json = serde_json::to_string_pretty(value).map_err(|e| TrainError::io(path, e))?;
    fs::write(path, json).map_err(|e| TrainError::io(path, e))
}

fn read_json<T: DeserializeOwned>(dir: &Path, name: &str) -> Result<T> {
    check_dir(dir)?;
    let path = dir.join(name);
    let text = fs::read_to_string(&path)
        .map_err(|e| TrainError::checkpoint(dir, format!("{name}: {e}")))?;
    serde_json::from_str(&text)
        .map_err(|e| TrainError::checkpoint(dir, format!("{name} is corrupt: {e}")))
}
