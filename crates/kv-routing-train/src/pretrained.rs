//! Model directories of both kinds behind one loader — a training checkpoint of this crate or a
//! Hugging Face checkpoint — and export of either to Hugging Face layout.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use kv_routing::{CachePlan, RoutedTransformer, RoutedTransformerConfig};
use kv_routing_hf::{
    is_gguf_file, is_pretrained, load_pretrained, save_pretrained, ExportOptions, HfConfig,
    HfTokenizer, LoadOptions, RoutingMetadata, GENERATION_CONFIG_FILE, ROUTING_METADATA_VERSION,
    TOKENIZER_FILE,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    /// The ids that end a sequence of this model (see [`end_of_sequence_ids`]); empty for
    /// byte-level models.
    pub fn end_of_sequence_ids(&self) -> Vec<u32> {
        let generation_config = std::fs::read_to_string(self.dir.join(GENERATION_CONFIG_FILE))
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok());
        end_of_sequence_ids(self.hf_config.as_ref(), generation_config.as_ref())
    }

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

/// Every end-of-sequence id of a model: `eos_token_id` of its `config.json` (a number or a
/// list) and of its `generation_config.json`, in that order, without repeats.
pub fn end_of_sequence_ids(
    config: Option<&HfConfig>,
    generation_config: Option<&Value>,
) -> Vec<u32> {
    let ids = |value: Option<&Value>| -> Vec<u32> {
        match value {
            Some(Value::Array(ids)) => ids.iter().filter_map(token_id).collect(),
            Some(id) => token_id(id).into_iter().collect(),
            None => Vec::new(),
        }
    };
    let mut all = ids(config.and_then(|c| c.extra.get("eos_token_id")));
    for id in ids(generation_config.and_then(|g| g.get("eos_token_id"))) {
        if !all.contains(&id) {
            all.push(id);
        }
    }
    all
}

fn token_id(value: &Value) -> Option<u32> {
    u32::try_from(value.as_u64()?).ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_end_of_sequence_id_of_config_and_generation_config_stops() {
        let mut config: HfConfig = serde_json::from_value(serde_json::json!({
            "model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 1,
            "eos_token_id": [128001, 128008, 128009]
        }))
        .unwrap();
        let generation = serde_json::json!({"eos_token_id": [128009, 7]});
        assert_eq!(
            end_of_sequence_ids(Some(&config), Some(&generation)),
            vec![128001, 128008, 128009, 7]
        );
        config
            .extra
            .insert("eos_token_id".into(), serde_json::json!(2));
        assert_eq!(end_of_sequence_ids(Some(&config), None), vec![2]);
        assert!(end_of_sequence_ids(None, None).is_empty());
    }
}
