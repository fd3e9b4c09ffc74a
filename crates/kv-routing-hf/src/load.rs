//! Loading a Hugging Face checkpoint directory into a [`RoutedTransformer`].

use std::collections::HashSet;
use std::path::Path;

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use kv_routing::{RoutedTransformer, RoutedTransformerConfig};

use crate::error::{HfError, Result};
use crate::hf_config::HfConfig;
use crate::parameter_map::{matrix, parameter_names, vector, Layout, Slot};
use crate::safetensors_files::{SafetensorsFiles, INDEX_FILE, SINGLE_FILE};
use crate::tokenizer::HfTokenizer;

/// Name of the model configuration in a checkpoint directory.
pub const CONFIG_FILE: &str = "config.json";

/// How to load a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Positions the rotary tables cover. Default: the checkpoint's `max_position_embeddings`.
    /// A smaller value saves the table's memory; sequences must stay below it.
    pub max_seq_len: Option<usize>,
}

/// A loaded checkpoint: the model and everything read with it.
#[derive(Debug)]
pub struct PretrainedModel<B: Backend> {
    /// The model, weights as stored (widened to the backend's float type).
    pub model: RoutedTransformer<B>,
    /// Its configuration.
    pub model_config: RoutedTransformerConfig,
    /// The checkpoint's `config.json` (exported again on save).
    pub hf_config: HfConfig,
    /// `tokenizer.json`, when the directory has one.
    pub tokenizer: Option<HfTokenizer>,
}

/// Whether `dir` looks like a Hugging Face checkpoint: a `config.json` next to
/// `model.safetensors` or a shard index.
pub fn is_hf_checkpoint(dir: &Path) -> bool {
    dir.join(CONFIG_FILE).is_file()
        && (dir.join(SINGLE_FILE).is_file() || dir.join(INDEX_FILE).is_file())
}

/// Loads the checkpoint in `dir` (`config.json`, `model.safetensors` or sharded
/// `model-0000x-of-0000y.safetensors` with their index, optional `tokenizer.json`) onto `device`.
///
/// Every tensor the config implies must be present with its exact shape, in F32, F16 or BF16;
/// a tensor the config has no place for is an error too (it means the config and the weights
/// disagree), except rotary caches (`*.rotary_emb.inv_freq`) and an `lm_head.weight` stored
/// next to tied embeddings, which `transformers` ignores as well.
pub fn load_pretrained<B: Backend>(
    dir: &Path,
    options: &LoadOptions,
    device: &B::Device,
) -> Result<PretrainedModel<B>> {
    let hf_config = HfConfig::read(&dir.join(CONFIG_FILE))?;
    let model_config = hf_config.model_config(options.max_seq_len)?;
    let files = SafetensorsFiles::open(dir)?;
    let mut model = model_config.init::<B>(device)?;
    let expected = parameter_names(&model);

    let known: HashSet<&str> = expected.iter().map(|(name, _)| name.as_str()).collect();
    let architecture = hf_config.architecture()?;
    for name in files.names() {
        let ignored = name.ends_with("rotary_emb.inv_freq")
            || (name == "lm_head.weight" && model_config.tie_embeddings);
        if !known.contains(name) && !ignored {
            return Err(HfError::UnexpectedTensor {
                name: name.into(),
                file: files
                    .file_of(name)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                architecture: architecture.class_name().into(),
            });
        }
    }
    for (name, slot) in &expected {
        load_parameter(&mut model, &files, name, *slot, device)?;
    }
    let tokenizer = HfTokenizer::from_dir(dir)?;
    Ok(PretrainedModel {
        model,
        model_config,
        hf_config,
        tokenizer,
    })
}

fn load_parameter<B: Backend>(
    model: &mut RoutedTransformer<B>,
    files: &SafetensorsFiles,
    name: &str,
    slot: Slot,
    device: &B::Device,
) -> Result<()> {
    let (shape, values) = files.read_f32(name)?;
    let check = |expected: Vec<usize>| {
        if shape == expected {
            Ok(())
        } else {
            Err(HfError::TensorShape {
                name: name.into(),
                expected,
                actual: shape.clone(),
            })
        }
    };
    match slot.layout() {
        Layout::Vector => {
            let param = vector(model, slot);
            check(param.lazy_shape().to_vec())?;
            *param = Param::from_tensor(Tensor::from_data(
                TensorData::new(values, shape.clone()),
                device,
            ));
        }
        layout => {
            let param = matrix(model, slot);
            let [rows, cols] = param.lazy_shape().dims::<2>();
            let values = if layout == Layout::LinearWeight {
                check(vec![cols, rows])?;
                transpose(&values, cols, rows)
            } else {
                check(vec![rows, cols])?;
                values
            };
            *param = Param::from_tensor(Tensor::from_data(
                TensorData::new(values, [rows, cols]),
                device,
            ));
        }
    }
    Ok(())
}

/// `[rows, cols]` row-major → `[cols, rows]` row-major.
pub(crate) fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for (r, row) in values.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            out[c * rows + r] = v;
        }
    }
    out
}
