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
//! place), so a save killed at any point leaves the previous checkpoint or the new one, complete;
//! the loaders here finish a save killed between its two renames ([`StagedDir::recover`]).

use std::fs;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use kv_routing::{RoutedTransformer, StochasticRouter};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::msgpack_bounds::check_msgpack_bounds;
use crate::parameter_shapes::{moment_mismatch, parameter_shapes, shape_mismatch};
use crate::train_config::TrainConfig;
use kv_routing_hf::{copy_tokenizer_files, StagedDir, TOKENIZER_FILE};

const CONFIG: &str = "config.json";
const STATE: &str = "state.json";
const MODEL: &str = "model.mpk";
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

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::new()
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

/// Loads a checkpoint's model (for evaluation, generation, or to fine-tune from).
pub fn load_model<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(TrainConfig, RoutedTransformer<B>)> {
    let config = load_config(dir)?;
    let path = checked_record_file(dir, MODEL)?;
    // The configuration decides what `init` allocates: check it against the weights' file
    // first (the record holds every parameter in f32). A damaged d_ff of 2^53, found by the
    // checkpoint fuzz test, otherwise aborted the process on allocation.
    let file_bytes = fs::metadata(&path)
        .map_err(|e| TrainError::io(&path, e))?
        .len();
    match config.model.parameter_count() {
        Some(n) if (n as u64).saturating_mul(4) <= file_bytes => {}
        n => {
            return Err(TrainError::checkpoint(
                dir,
                format!(
                    "{CONFIG} describes a model of {} parameters, more than the {file_bytes} bytes of {MODEL} hold",
                    n.map_or_else(|| "more than usize::MAX".into(), |n| n.to_string())
                ),
            ))
        }
    }
    let model = config.model.init::<B>(device)?;
    let expected = parameter_shapes::<B, _>(&model);
    let loaded = without_panics(dir, MODEL, || model.load_file(path, &recorder(), device))?;
    if let Some(mismatch) = shape_mismatch::<B, _>(&expected, &loaded) {
        return Err(TrainError::checkpoint(
            dir,
            format!("{MODEL} does not match {CONFIG}: {mismatch}"),
        ));
    }
    Ok((config, loaded))
}

/// Loads a checkpoint's optimizer moments, after checking that every moment belongs to a
/// parameter of `model` and has its shape.
pub fn load_optimizer<B: AutodiffBackend>(
    dir: &Path,
    model: &RoutedTransformer<B>,
    device: &B::Device,
) -> Result<OptimizerRecord<B>> {
    let path = checked_record_file(dir, OPTIMIZER)?;
    let record: OptimizerRecord<B> = without_panics(dir, OPTIMIZER, || {
        Recorder::<B>::load(&recorder(), path, device)
    })?;
    if let Some(mismatch) = moment_mismatch(&record, model) {
        return Err(TrainError::checkpoint(
            dir,
            format!("{OPTIMIZER} does not match {MODEL}: {mismatch}"),
        ));
    }
    Ok(record)
}

/// Runs one of Burn's record loads, turning its failure into an error naming `name`.
///
/// Burn 0.21 panics on some damaged records instead of returning its error: a parameter id
/// that does not decode (`ParamId::deserialize` expects; found by the checkpoint fuzz test). The
/// panic is caught and reported as the corrupt file it is, so a damaged checkpoint never takes
/// the program down.
fn without_panics<T, E: std::fmt::Display>(
    dir: &Path,
    name: &str,
    load: impl FnOnce() -> std::result::Result<T, E>,
) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(load)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(TrainError::checkpoint(
            dir,
            format!("{name} does not load: {e}"),
        )),
        Err(panic) => {
            let reason = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("Burn's decoder panicked");
            Err(TrainError::checkpoint(
                dir,
                format!("{name} is corrupt: {reason}"),
            ))
        }
    }
}

/// The path of the record file `name` in `dir`, once its MessagePack encoding is known to
/// declare no length beyond the file (Burn's recorder would allocate whatever it declares).
fn checked_record_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if !path.is_file() {
        return Err(TrainError::checkpoint(dir, format!("{name} is missing")));
    }
    let bytes = fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
    check_msgpack_bounds(&bytes)
        .map_err(|e| TrainError::checkpoint(dir, format!("{name} is corrupt: {e}")))?;
    Ok(path)
}

fn check_dir(dir: &Path) -> Result<()> {
    // A save killed between its two renames left the previous checkpoint in `<dir>.old`.
    StagedDir::recover(dir)?;
    if dir.is_dir() {
        Ok(())
    } else {
        Err(TrainError::checkpoint(dir, "no such checkpoint directory"))
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
