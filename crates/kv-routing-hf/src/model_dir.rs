//! [`load_model_dir`]: one loader for every model a program is pointed at — a Hugging Face
//! checkpoint directory, a GGUF file, or a training checkpoint of kv-routing-train (its model
//! half, [`crate::run_checkpoint`]) — as a [`LoadedModel`] with its text codec, routing
//! history and serving plan; and [`LoadedModel::export`] of any of them to Hugging Face
//! layout.
//!
//! The loader only reads: a directory whose last commit was interrupted is read from its
//! previous state and left as it is (see [`StagedDir::committed`]).

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use kv_routing::{CachePlan, RoutedTransformer, RoutedTransformerConfig};
use serde_json::Value;

use crate::error::{HfError, Result};
use crate::export::{save_pretrained, ExportOptions};
use crate::hf_config::HfConfig;
use crate::load::{is_pretrained, load_pretrained, LoadOptions, WeightStorage};
use crate::routing_metadata::{RoutingMetadata, ROUTING_METADATA_VERSION};
use crate::run_checkpoint::{load_run_weights, TrainingRun};
use crate::staged_dir::StagedDir;
use crate::text_codec::TextCodec;
use crate::tokenizer::{HfTokenizer, GENERATION_CONFIG_FILE};

/// A model read from a directory (or GGUF file), with what came with it.
#[derive(Debug)]
pub struct LoadedModel<B: Backend> {
    /// The model.
    pub model: RoutedTransformer<B>,
    /// Its configuration.
    pub model_config: RoutedTransformerConfig,
    /// The training run, for a training checkpoint.
    pub run: Option<TrainingRun>,
    /// The Hugging Face config: the checkpoint's own, or the base a run started from.
    pub hf_config: Option<HfConfig>,
    /// How text maps to tokens for this model.
    pub codec: TextCodec,
    /// Where it was read from: the path asked for, or its previous state `<path>.old` when
    /// a commit into it was interrupted.
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

    /// The serving plan stored with the model (`kv_routing.serve_cached_layers` of its
    /// Hugging Face config), if any.
    pub fn stored_plan(&self) -> Result<Option<CachePlan>> {
        match self.hf_config.as_ref().and_then(|c| c.kv_routing.as_ref()) {
            Some(routing) if routing.serve_cached_layers.is_some() => {
                Ok(Some(routing.serve_plan(self.model_config.n_layers)?))
            }
            _ => Ok(None),
        }
    }

    /// How the weights were trained, as an export records it: the run's routing for a
    /// training checkpoint, else the `kv_routing` block of the Hugging Face config, else
    /// never routed (`routing_p` 0: only the full cache is safe).
    pub fn routing_history(&self) -> RoutingMetadata {
        match (&self.run, self.hf_config.as_ref()) {
            (Some(run), _) => run.routing(),
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
        }
    }

    /// Writes the model to `out` in Hugging Face layout (see [`save_pretrained`]), with its
    /// [routing history](Self::routing_history) and `serve` (the plan to serve with) under
    /// `kv_routing`, and its tokenizer files. `options.routing` and `options.copy_files_from`
    /// are filled in here.
    pub fn export(
        &self,
        out: &Path,
        serve: Option<&CachePlan>,
        mut options: ExportOptions,
    ) -> Result<HfConfig> {
        // `out` may name this model's directory while it is read from `<out>.old`: the
        // export's writer would put that back into `out` and then replace it.
        if out == self.dir || StagedDir::committed(out).is_ok_and(|read| read == self.dir) {
            return Err(HfError::Export(format!(
                "writing into the directory it loads from ({}) would replace it",
                out.display()
            )));
        }
        let mut routing = self.routing_history();
        if let Some(plan) = serve {
            if plan.n_layers() != self.model_config.n_layers {
                return Err(HfError::Export(format!(
                    "a serving plan of {} layers for a model of {}",
                    plan.n_layers(),
                    self.model_config.n_layers
                )));
            }
            routing.serve_cached_layers = Some(plan.cached_layers().to_vec());
        }
        options.routing = Some(routing);
        options.copy_files_from = Some(self.dir.clone());
        save_pretrained(
            &self.model,
            &self.model_config,
            self.hf_config.as_ref(),
            out,
            &options,
        )
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

/// Loads the model at `path`: a Hugging Face checkpoint when it is a directory with
/// `config.json` and safetensors weights, a GGUF file, else a training checkpoint. Only reads
/// (see the module docs).
pub fn load_model_dir<B: Backend>(path: &Path, device: &B::Device) -> Result<LoadedModel<B>> {
    load_model_dir_with(path, WeightStorage::Float, device)
}

/// [`load_model_dir`] with the matrices held as `weights` says: a GGUF file's blocks kept as
/// stored ([`WeightStorage::AsStored`]), or every matrix of any checkpoint in a block format
/// ([`WeightStorage::Blocks`], quantized at load where the file does not store that format).
pub fn load_model_dir_with<B: Backend>(
    path: &Path,
    weights: WeightStorage,
    device: &B::Device,
) -> Result<LoadedModel<B>> {
    let dir = StagedDir::committed(path)?;
    if is_pretrained(&dir) {
        let options = LoadOptions {
            weights,
            ..LoadOptions::default()
        };
        let loaded = load_pretrained::<B>(&dir, &options, device)?;
        return Ok(LoadedModel {
            model: loaded.model,
            model_config: loaded.model_config,
            run: None,
            hf_config: Some(loaded.hf_config),
            codec: TextCodec::from(loaded.tokenizer),
            dir,
        });
    }
    let run = TrainingRun::read(&dir)?;
    // The record holds `[in, out]` row-major; decode steps read the transposed layout a
    // pretrained checkpoint loads in 1.5x faster.
    let mut model = load_run_weights::<B>(&dir, &run.model, device)?.with_output_major_weights();
    if let WeightStorage::Blocks(format) = weights {
        model = model.with_block_weights(format)?;
    }
    Ok(LoadedModel {
        model,
        model_config: run.model.clone(),
        hf_config: run.base.as_ref().map(|b| b.hf_config.clone()),
        codec: TextCodec::from(HfTokenizer::from_dir(&dir)?),
        run: Some(run),
        dir,
    })
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
