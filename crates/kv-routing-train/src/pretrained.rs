//! Model directories of both kinds behind one loader — a training checkpoint of this crate or a
//! Hugging Face checkpoint — and export of either to Hugging Face layout.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use kv_routing::{CachePlan, RoutedTransformer, RoutedTransformerConfig};
use kv_routing_hf::{
    is_gguf_file, is_pretrained, load_pretrained, save_pretrained, ExportOptions, HfConfig,
    HfTokenizer, LoadOptions, RoutingMetadata, ROUTING_METADATA_VERSION, TOKENIZER_FILE,
};
use serde::{Deserialize, Serialize};

use crate::checkpoint::load_model;
use crate::error::{Result, TrainError};
use crate::tokenizer::TextCodec;
use crate::train_config::TrainConfig;

/// The Hugging Face checkpoint a run was initialized from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainedBase {
    /// Where it was loaded from.
    pub source: PathBuf,
    /// Its `config.json` (written back, updated, on export).
    pub hf_config: HfConfig,
}

/// A model read from a directory, with what came with it.
#[derive(Debug)]
pub struct LoadedModel<B: Backend> {
    /// The model.
    pub model: RoutedTransformer<B>,
    /// Its configuration.
    pub model_config: RoutedTransformerConfig,
    /// The training run, for a training checkpoint.
    pub train_config: Option<TrainConfig>,
    /// The Hugging Face config: the checkpoint's own, or the base a run started from.
    pub hf_config: Option<HfConfig>,
    /// How text maps to tokens for this model.
    pub codec: TextCodec,
    /// The directory it was read from.
    pub dir: PathBuf,
}

impl<B: Backend> LoadedModel<B> {
    /// The serving plan stored with the model (`kv_routing.serve_cached_layers`), if any.
    pub fn stored_plan(&self) -> Result<Option<CachePlan>> {
        match self.hf_config.as_ref().and_then(|c| c.kv_routing.as_ref()) {
            Some(routing) if routing.serve_cached_layers.is_some() => {
                Ok(Some(routing.serve_plan(self.model_config.n_layers)?))
            }
            _ => Ok(None),
        }
    }
}

/// The file holding the tokenizer of the model at `path`: the GGUF file itself, or the
/// directory's `tokenizer.json` if it has one.
pub fn tokenizer_file(path: &Path) -> Option<PathBuf> {
    if is_gguf_file(path) {
        return Some(path.to_path_buf());
    }
    let file = path.join(TOKENIZER_FILE);
    file.is_file().then_some(file)
}

/// Loads the model at `dir`: a Hugging Face checkpoint when `dir` has `config.json` and
/// safetensors weights, a GGUF file, else a training checkpoint.
pub fn load_model_dir<B: Backend>(dir: &Path, device: &B::Device) -> Result<LoadedModel<B>> {
    if is_pretrained(dir) {
        let loaded = load_pretrained::<B>(dir, &LoadOptions::default(), device)?;
        return Ok(LoadedModel {
            model: loaded.model,
            model_config: loaded.model_config,
            train_config: None,
            hf_config: Some(loaded.hf_config),
            codec: TextCodec::from(loaded.tokenizer),
            dir: dir.to_path_buf(),
        });
    }
    let (train_config, model) = load_model::<B>(dir, device)?;
    Ok(LoadedModel {
        model,
        model_config: train_config.model.clone(),
        hf_config: train_config.base.as_ref().map(|b| b.hf_config.clone()),
        train_config: Some(train_config),
        codec: TextCodec::from(HfTokenizer::from_dir(dir)?),
        dir: dir.to_path_buf(),
    })
}

/// Writes `loaded` to `out` in Hugging Face layout (see [`save_pretrained`]), with its routing
/// history and `serve` (the plan to serve with) under `kv_routing`, and its tokenizer files.
/// `options.routing` and `options.copy_files_from` are filled in here.
pub fn export_model<B: Backend>(
    loaded: &LoadedModel<B>,
    out: &Path,
    serve: Option<&CachePlan>,
    mut options: ExportOptions,
) -> Result<HfConfig> {
    if out == loaded.dir {
        return Err(TrainError::Config(format!(
            "export into the directory it loads from ({}) would replace it",
            out.display()
        )));
    }
    let mut routing = match (&loaded.train_config, loaded.hf_config.as_ref()) {
        (Some(run), _) => RoutingMetadata {
            version: ROUTING_METADATA_VERSION,
            routing_p: run.p,
            routed_steps: run.steps,
            route_seed: run.route_seed,
            serve_cached_layers: None,
        },
        (
            None,
            Some(HfConfig {
                kv_routing: Some(routing),
                ..
            }),
        ) => routing.clone(),
        (None, _) => RoutingMetadata {
            version: ROUTING_METADATA_VERSION,
            routing_p: 0.0,
            routed_steps: 0,
            route_seed: 0,
            serve_cached_layers: None,
        },
    };
    if let Some(plan) = serve {
        if plan.n_layers() != loaded.model_config.n_layers {
            return Err(TrainError::Config(format!(
                "the serving plan has {} layers, the model {}",
                plan.n_layers(),
                loaded.model_config.n_layers
            )));
        }
        routing.serve_cached_layers = Some(plan.cached_layers().to_vec());
    }
    options.routing = Some(routing);
    options.copy_files_from = Some(loaded.dir.clone());
    Ok(save_pretrained(
        &loaded.model,
        &loaded.model_config,
        loaded.hf_config.as_ref(),
        out,
        &options,
    )?)
}
