//! The model half of a training checkpoint of kv-routing-train, read without the training
//! crate: what evaluation, generation, export and fine-tuning need from it — the model's
//! configuration, the routing it was trained with, the Hugging Face checkpoint it started
//! from, and its weights.
//!
//! A training checkpoint is a directory that kv-routing-train writes whole (its `checkpoint`
//! module gives the layout: run configuration, run state, weights, optimizer moments,
//! tokenizer files). Two of its files are read here:
//! - `config.json` ([`CONFIG_FILE`]): the run's configuration, of which [`TrainingRun`] reads
//!   the fields `model`, `p`, `steps`, `route_seed` and `base` (other fields are the training
//!   crate's). The training crate serializes those fields under those names, and its tests
//!   read its configuration back as a `TrainingRun`.
//! - `model.mpk` ([`MODEL_RECORD_FILE`]): the weights, the record of the
//!   [`RoutedTransformer`] under [`recorder`].
//!
//! A damaged checkpoint is an [`HfError::Checkpoint`], never a panic or an allocation beyond
//! the file (see [`crate::record`]).

use std::fs;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::backend::Backend;
use kv_routing::{RoutedTransformer, RoutedTransformerConfig};
use serde::{Deserialize, Serialize};

use crate::error::{HfError, Result};
use crate::hf_config::HfConfig;
use crate::load::CONFIG_FILE;
use crate::record::{
    checked_record_file, decode_without_panics, parameters, recorder, shape_mismatch,
};
use crate::routing_metadata::{RoutingMetadata, ROUTING_METADATA_VERSION};

/// Name of the weights' record in a training checkpoint.
pub const MODEL_RECORD_FILE: &str = "model.mpk";

/// The Hugging Face checkpoint a run was initialized from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainedBase {
    /// Where it was loaded from.
    pub source: PathBuf,
    /// Its `config.json` (written back, updated, on export).
    pub hf_config: HfConfig,
}

/// What a reader needs of a training checkpoint's run configuration (`config.json`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TrainingRun {
    /// The model.
    pub model: RoutedTransformerConfig,
    /// Routing probability the run trained with.
    pub p: f64,
    /// Optimizer steps of the run in total.
    pub steps: u64,
    /// Seed of the run's route stream.
    pub route_seed: u64,
    /// The Hugging Face checkpoint the run started from, if any.
    #[serde(default)]
    pub base: Option<PretrainedBase>,
}

impl TrainingRun {
    /// Reads the run configuration of the training checkpoint `dir`, with its model
    /// configuration checked.
    pub fn read(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(HfError::checkpoint(dir, "no such checkpoint directory"));
        }
        let text = fs::read_to_string(dir.join(CONFIG_FILE))
            .map_err(|e| HfError::checkpoint(dir, format!("{CONFIG_FILE}: {e}")))?;
        let run: Self = serde_json::from_str(&text)
            .map_err(|e| HfError::checkpoint(dir, format!("{CONFIG_FILE} is corrupt: {e}")))?;
        run.model
            .validate()
            .map_err(|e| HfError::checkpoint(dir, format!("{CONFIG_FILE}: {e}")))?;
        Ok(run)
    }

    /// The routing history of the run's weights, as an export records it under `kv_routing`
    /// (no serving plan: the run chose none).
    pub fn routing(&self) -> RoutingMetadata {
        RoutingMetadata {
            version: ROUTING_METADATA_VERSION,
            routing_p: self.p,
            routed_steps: self.steps,
            route_seed: self.route_seed,
            serve_cached_layers: None,
        }
    }
}

/// Loads the weights of the training checkpoint `dir` into a model of `config` (the
/// checkpoint's own, from [`TrainingRun::read`] or the training crate's configuration).
pub fn load_run_weights<B: Backend>(
    dir: &Path,
    config: &RoutedTransformerConfig,
    device: &B::Device,
) -> Result<RoutedTransformer<B>> {
    let path = checked_record_file(dir, MODEL_RECORD_FILE)?;
    // The configuration decides what `init` allocates: check it against the weights' file
    // first (the record holds every parameter in f32). A damaged d_ff of 2^53, found by the
    // checkpoint fuzz test, otherwise aborted the process on allocation.
    let file_bytes = fs::metadata(&path)
        .map_err(|e| HfError::io(&path, e))?
        .len();
    match config.parameter_count() {
        Some(n) if (n as u64).saturating_mul(4) <= file_bytes => {}
        n => {
            return Err(HfError::checkpoint(
                dir,
                format!(
                    "{CONFIG_FILE} describes a model of {} parameters, more than the {file_bytes} bytes of {MODEL_RECORD_FILE} hold",
                    n.map_or_else(|| "more than usize::MAX".into(), |n| n.to_string())
                ),
            ))
        }
    }
    let model = config.init::<B>(device)?;
    let expected = parameters::<B, _>(&model);
    let loaded = decode_without_panics(dir, MODEL_RECORD_FILE, || {
        model.load_file(path, &recorder(), device)
    })?;
    if let Some(mismatch) = shape_mismatch::<B, _>(&expected, &loaded) {
        return Err(HfError::checkpoint(
            dir,
            format!("{MODEL_RECORD_FILE} does not match {CONFIG_FILE}: {mismatch}"),
        ));
    }
    Ok(loaded)
}
