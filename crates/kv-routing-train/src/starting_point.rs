//! [`load_starting_point`]: the weights a run starts from, or distills from, whatever holds
//! them: a Hugging Face checkpoint directory, a GGUF file, or a training run's checkpoint.
//!
//! The source belongs to someone else (another run may be saving into it): it is only read,
//! through [`StagedDir::committed`].

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use kv_routing::{RoutedTransformer, RoutedTransformerConfig};
use kv_routing_hf::{is_pretrained, load_pretrained, LoadOptions, PretrainedBase, StagedDir};

use crate::checkpoint::load_model;
use crate::error::{Result, TrainError};

/// Weights read from a checkpoint, with what they are.
#[derive(Debug)]
pub struct StartingPoint<B: Backend> {
    /// Where the weights were read: the source, or `<source>.old` while a save into it is
    /// interrupted ([`StagedDir::committed`]).
    pub source: PathBuf,
    /// The model's configuration.
    pub config: RoutedTransformerConfig,
    /// The Hugging Face model the weights come from, if any (for a training run's checkpoint,
    /// the one its run started from).
    pub base: Option<PretrainedBase>,
    /// The weights.
    pub model: RoutedTransformer<B>,
}

/// Loads the weights at `source` (see the module docs) onto `device`.
pub fn load_starting_point<B: Backend>(
    source: &Path,
    device: &B::Device,
) -> Result<StartingPoint<B>> {
    let source = StagedDir::committed(source)?;
    if is_pretrained(&source) {
        let loaded = load_pretrained::<B>(&source, &LoadOptions::default(), device)?;
        let base = PretrainedBase {
            source: std::path::absolute(&source).map_err(|e| TrainError::io(&source, e))?,
            hf_config: loaded.hf_config,
        };
        Ok(StartingPoint {
            source,
            config: loaded.model_config,
            base: Some(base),
            model: loaded.model,
        })
    } else {
        let (saved, model) = load_model::<B>(&source, device)?;
        Ok(StartingPoint {
            source,
            config: saved.model,
            base: saved.base,
            model,
        })
    }
}
