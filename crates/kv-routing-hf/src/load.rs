//! Loading a Hugging Face checkpoint directory or a GGUF file into a [`RoutedTransformer`].

use std::collections::HashSet;
use std::path::Path;

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use kv_routing::{
    BlockFormat, BlockWeight, Projection, RoutedTransformer, RoutedTransformerConfig,
    TokenEmbedding,
};

use crate::error::{HfError, Result};
use crate::gguf::{is_gguf_file, GgufCheckpoint};
use crate::hf_config::HfConfig;
use crate::parameter_map::{matrix, parameter_names, projection, vector, Layout, Slot};
use crate::safetensors_files::{SafetensorsFiles, INDEX_FILE, SINGLE_FILE};
use crate::tokenizer::HfTokenizer;

/// Name of the model configuration in a checkpoint directory.
pub const CONFIG_FILE: &str = "config.json";

/// Longest context a checkpoint may ask for without [`LoadOptions::max_seq_len`] (its rotary
/// tables are allocated at load): 2M positions, beyond released models (Llama 3.1: 128K,
/// Qwen2.5-1M: 1M), so a larger value is taken for a corrupted configuration. At head_dim 128
/// the tables of 2M positions take 1 GiB.
pub const MAX_POSITIONS: usize = 1 << 21;

/// How to load a checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Positions the rotary tables cover. Default: the checkpoint's `max_position_embeddings`.
    /// A smaller value saves the table's memory; sequences must stay below it.
    pub max_seq_len: Option<usize>,
    /// What the matrices are held as.
    pub weights: WeightStorage,
}

/// What a loaded model holds its matrices (projections, embedding, LM head) as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WeightStorage {
    /// Floats of the device's type (the default; training needs them): a GGUF file's blocks
    /// are dequantized at load.
    #[default]
    Float,
    /// A GGUF file's Q8_0 and Q4_1 matrices as the file stores them (4.5-8.5 bits a value
    /// instead of 16 or 32), everything else in floats. The same as `Float` for other files.
    AsStored,
    /// Every matrix in this format: a GGUF file's blocks of that format as stored, anything else
    /// quantized at load ([`RoutedTransformer::with_block_weights`]).
    Blocks(BlockFormat),
}

impl WeightStorage {
    /// `float`, `as-stored`, `q8_0` or `q4_1`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Float => "float",
            Self::AsStored => "as-stored",
            Self::Blocks(format) => format.name(),
        }
    }
}

impl std::str::FromStr for WeightStorage {
    type Err = String;

    fn from_str(name: &str) -> std::result::Result<Self, String> {
        match name.to_ascii_lowercase().as_str() {
            "float" => Ok(Self::Float),
            "as-stored" => Ok(Self::AsStored),
            other => other.parse().map(Self::Blocks).map_err(|_| {
                format!("unknown weight storage `{name}` (float, as-stored, q8_0 or q4_1)")
            }),
        }
    }
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

/// Whether `path` is a pretrained model this crate loads: a Hugging Face checkpoint directory
/// or a GGUF file.
pub fn is_pretrained(path: &Path) -> bool {
    is_hf_checkpoint(path) || is_gguf_file(path)
}

/// Where a checkpoint's tensors come from, by Hugging Face name and in Hugging Face layout.
trait TensorSource {
    /// Every tensor name.
    fn tensor_names(&self) -> Vec<String>;
    /// Tensor `name` with its shape, in the type it is stored in (GGUF's quantized types come
    /// dequantized to f32).
    fn tensor(&self, name: &str) -> Result<TensorData>;
    /// The file holding tensor `name`, for messages.
    fn file_of(&self, name: &str) -> String;
    /// Values held by all tensors together.
    fn total_values(&self) -> usize;
    /// Tensor `name` as the blocks the file stores, when it is in a block format the model
    /// multiplies in place.
    fn blocks(&self, _name: &str) -> Result<Option<BlockWeight>> {
        Ok(None)
    }
}

impl TensorSource for SafetensorsFiles {
    fn tensor_names(&self) -> Vec<String> {
        self.names().map(str::to_owned).collect()
    }

    fn tensor(&self, name: &str) -> Result<TensorData> {
        self.read(name)
    }

    fn file_of(&self, name: &str) -> String {
        SafetensorsFiles::file_of(self, name)
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    fn total_values(&self) -> usize {
        SafetensorsFiles::total_values(self)
    }
}

impl TensorSource for GgufCheckpoint {
    fn tensor_names(&self) -> Vec<String> {
        self.names().map(str::to_owned).collect()
    }

    fn tensor(&self, name: &str) -> Result<TensorData> {
        let (shape, values) = self.read_f32(name)?;
        Ok(TensorData::new(values, shape))
    }

    fn file_of(&self, name: &str) -> String {
        format!(
            "{} (as `{}`)",
            self.file().path().display(),
            self.gguf_name(name).unwrap_or(name)
        )
    }

    fn blocks(&self, name: &str) -> Result<Option<BlockWeight>> {
        self.read_blocks(name)
    }

    fn total_values(&self) -> usize {
        self.file()
            .tensors()
            .values()
            .fold(0, |total: usize, t| total.saturating_add(t.n_values()))
    }
}

/// Loads the pretrained model at `path` onto `device`: a Hugging Face checkpoint directory
/// (`config.json`, `model.safetensors` or sharded `model-0000x-of-0000y.safetensors` with their
/// index, optional `tokenizer.json`) or a GGUF file (configuration and tokenizer from its
/// metadata, tensors dequantized; see [`crate::gguf`]).
///
/// Every tensor the config implies must be present with its exact shape, in a supported type;
/// a tensor the config has no place for is an error too (it means the config and the weights
/// disagree), except rotary caches (`*.rotary_emb.inv_freq`) and an `lm_head.weight` stored
/// next to tied embeddings, which `transformers` ignores as well.
pub fn load_pretrained<B: Backend>(
    path: &Path,
    options: &LoadOptions,
    device: &B::Device,
) -> Result<PretrainedModel<B>> {
    if is_gguf_file(path) {
        let checkpoint = GgufCheckpoint::open(path)?;
        let tokenizer = HfTokenizer::from_gguf(checkpoint.file())?;
        let hf_config = checkpoint.hf_config().clone();
        return load_from(&checkpoint, hf_config, Some(tokenizer), options, device);
    }
    let hf_config = HfConfig::read(&path.join(CONFIG_FILE))?;
    let files = SafetensorsFiles::open(path)?;
    let tokenizer = HfTokenizer::from_dir(path)?;
    load_from(&files, hf_config, tokenizer, options, device)
}

fn load_from<B: Backend>(
    source: &impl TensorSource,
    hf_config: HfConfig,
    tokenizer: Option<HfTokenizer>,
    options: &LoadOptions,
    device: &B::Device,
) -> Result<PretrainedModel<B>> {
    let model_config = hf_config.model_config(options.max_seq_len)?;
    // The configuration decides what is allocated: check it against the weights first. The
    // slack lets a checkpoint that merely lacks some tensors reach the error naming them; a
    // corrupted count (layers, widths) is off by far more.
    let held = source.total_values();
    match model_config.parameter_count() {
        Some(needed) if needed <= held.saturating_mul(2).saturating_add(1 << 20) => {}
        needed => {
            return Err(HfError::Unsupported(format!(
                "the configuration describes a model of {} parameters, but the checkpoint holds {held} values",
                needed.map_or_else(|| "more than usize::MAX".into(), |n| n.to_string())
            )))
        }
    }
    if model_config.max_seq_len > MAX_POSITIONS {
        return Err(HfError::Unsupported(format!(
            "a context of {} positions (the rotary tables would need {} bytes); load with LoadOptions::max_seq_len <= {MAX_POSITIONS}",
            model_config.max_seq_len,
            model_config.max_seq_len.saturating_mul(model_config.attention_config().resolved_head_dim()).saturating_mul(4)
        )));
    }
    let mut model = model_config.init::<B>(device)?;
    let expected = parameter_names(&model);

    let known: HashSet<&str> = expected.iter().map(|(name, _)| name.as_str()).collect();
    let architecture = hf_config.architecture()?;
    for name in source.tensor_names() {
        let ignored = name.ends_with("rotary_emb.inv_freq")
            || (name == "lm_head.weight" && model_config.tie_embeddings);
        if !known.contains(name.as_str()) && !ignored {
            return Err(HfError::UnexpectedTensor {
                file: source.file_of(&name),
                name,
                architecture: architecture.class_name().into(),
            });
        }
    }
    for (name, slot) in &expected {
        load_parameter(&mut model, source, name, *slot, options.weights, device)?;
    }
    if let WeightStorage::Blocks(format) = options.weights {
        model = model.with_block_weights(format).map_err(HfError::from)?;
    }
    Ok(PretrainedModel {
        model,
        model_config,
        hf_config,
        tokenizer,
    })
}

fn load_parameter<B: Backend>(
    model: &mut RoutedTransformer<B>,
    source: &impl TensorSource,
    name: &str,
    slot: Slot,
    weights: WeightStorage,
    device: &B::Device,
) -> Result<()> {
    if slot.layout() != Layout::Vector && weights != WeightStorage::Float {
        if let Some(blocks) = source.blocks(name)? {
            let wanted = match weights {
                WeightStorage::Blocks(format) => blocks.format() == format,
                _ => true,
            };
            if wanted {
                return set_blocks(model, slot, name, blocks, device);
            }
        }
    }
    let data = source.tensor(name)?;
    let shape = data.shape.to_vec();
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
            *param = Param::from_tensor(Tensor::from_data(data, device));
        }
        layout => {
            let param = matrix(model, slot);
            let [rows, cols] = param.lazy_shape().dims::<2>();
            let tensor = if layout == Layout::LinearWeight {
                // Kept in the checkpoint's `[out, in]` order and used through its transposed
                // view: no host transpose at load, and the layout a decode step reads fastest
                // (see kv_routing's projection).
                check(vec![cols, rows])?;
                Tensor::<B, 2>::from_data(data, device).transpose()
            } else {
                check(vec![rows, cols])?;
                Tensor::from_data(data, device)
            };
            *param = Param::from_tensor(tensor);
        }
    }
    Ok(())
}

/// Installs `blocks` (tensor `name`, in the checkpoint's `[out, in]` layout) as the matrix at
/// `slot`, after checking its shape against the model's.
fn set_blocks<B: Backend>(
    model: &mut RoutedTransformer<B>,
    slot: Slot,
    name: &str,
    blocks: BlockWeight,
    device: &B::Device,
) -> Result<()> {
    let [rows, cols] = matrix(model, slot).lazy_shape().dims::<2>();
    // Projections hold `[in, out]`, the checkpoint `[out, in]`; the embedding is as stored.
    let expected = match slot.layout() {
        Layout::LinearWeight => [cols, rows],
        _ => [rows, cols],
    };
    if blocks.dims() != expected {
        return Err(HfError::TensorShape {
            name: name.into(),
            expected: expected.to_vec(),
            actual: blocks.dims().to_vec(),
        });
    }
    match slot {
        Slot::Embedding => model.embedding = TokenEmbedding::from_blocks(blocks, device),
        _ => {
            let projection = projection(model, slot);
            *projection = Projection::from_blocks(blocks, projection.bias.take(), device);
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
