//! Saving a [`RoutedTransformer`] as a Hugging Face checkpoint that `transformers` loads with
//! `AutoModelForCausalLM.from_pretrained`.
//!
//! The directory is written through a [`StagedDir`], so an interrupted export never leaves a
//! half-written checkpoint under `dir`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use half::{bf16, f16};
use kv_routing::{Precision, RoutedTransformer, RoutedTransformerConfig};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Value};

use crate::error::{HfError, Result};
use crate::hf_config::HfConfig;
use crate::load::{transpose, CONFIG_FILE};
use crate::parameter_map::{matrix, parameter_names, vector, Layout, Slot};
use crate::routing_metadata::RoutingMetadata;
use crate::safetensors_files::{INDEX_FILE, SINGLE_FILE};
use crate::staged_dir::{copy_tokenizer_files, StagedDir};

/// Element type of exported weights: the programs' [`Precision`] (one type, one parser).
pub type ExportDtype = Precision;

fn safetensors_dtype(dtype: ExportDtype) -> Dtype {
    match dtype {
        Precision::F32 => Dtype::F32,
        Precision::F16 => Dtype::F16,
        Precision::BF16 => Dtype::BF16,
    }
}

fn encode(dtype: ExportDtype, values: &[f32]) -> Vec<u8> {
    match dtype {
        Precision::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Precision::F16 => values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
        Precision::BF16 => values
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect(),
    }
}

/// How to export.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportOptions {
    /// Element type of the weights. Default: f32.
    pub dtype: ExportDtype,
    /// Largest shard; a model that fits is written as one `model.safetensors`, a larger one as
    /// `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json`. Default: 5 GB
    /// (as `transformers` saves). A tensor larger than this gets a shard of its own.
    pub max_shard_bytes: u64,
    /// The `kv_routing` block of `config.json`.
    pub routing: Option<RoutingMetadata>,
    /// A directory whose tokenizer and generation files are copied (see
    /// [`TOKENIZER_FILES`](crate::TOKENIZER_FILES)).
    pub copy_files_from: Option<PathBuf>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            dtype: ExportDtype::F32,
            max_shard_bytes: 5_000_000_000,
            routing: None,
            copy_files_from: None,
        }
    }
}

/// Writes `model` (configured by `model_config`) to `dir` in Hugging Face layout and returns the
/// `config.json` written. `base` is the config the weights were loaded from, if any: its other
/// fields (token ids, chat settings...) are kept. `dir` is replaced if it exists.
pub fn save_pretrained<B: Backend>(
    model: &RoutedTransformer<B>,
    model_config: &RoutedTransformerConfig,
    base: Option<&HfConfig>,
    dir: &Path,
    options: &ExportOptions,
) -> Result<HfConfig> {
    let structure = [
        model.n_layers(),
        model.vocab_size(),
        model.n_kv_heads(),
        model.head_dim(),
    ];
    let configured = [
        model_config.n_layers,
        model_config.vocab_size,
        model_config.attention_config().kv_heads(),
        model_config.attention_config().resolved_head_dim(),
    ];
    if structure != configured || model.lm_head.is_none() != model_config.tie_embeddings {
        return Err(HfError::Unsupported(format!(
            "the model (layers, vocab, kv heads, head_dim = {structure:?}) does not match its config {configured:?}"
        )));
    }
    if model.sharing_adapters_merged() {
        // The merged weights serve only sharing plans; exported, they would be read as the
        // model's full plan.
        return Err(HfError::Unsupported(
            "the model's sharing adapters are merged into its weights; export the unmerged model"
                .into(),
        ));
    }
    if model.sharing_adapter_rank().is_some() || model_config.sharing_adapter.is_some() {
        // The Hugging Face layout has no place for weights that only sharing plans use; dropping
        // them would silently give back the starting model under every plan.
        return Err(HfError::Unsupported(
            "the model has sharing adapters, which the Hugging Face layout cannot hold; serve it from its training checkpoint".into(),
        ));
    }
    if options.max_shard_bytes == 0 {
        return Err(HfError::Unsupported("max_shard_bytes must be >= 1".into()));
    }
    let mut config = HfConfig::describing(model_config, base)?;
    config.kv_routing = options.routing.clone();
    let torch_dtype = Value::from(options.dtype.torch_name());
    config
        .extra
        .insert("torch_dtype".into(), torch_dtype.clone());
    if config.extra.contains_key("dtype") {
        config.extra.insert("dtype".into(), torch_dtype);
    }

    let staged = StagedDir::begin(dir)?;
    write_weights(model, staged.path(), options)?;
    config.write(&staged.path().join(CONFIG_FILE))?;
    if let Some(source) = &options.copy_files_from {
        copy_tokenizer_files(source, staged.path())?;
    }
    staged.commit()?;
    Ok(config)
}

/// Plans shards by size, then converts and writes one shard at a time (peak host memory: one
/// shard).
fn write_weights<B: Backend>(
    model: &RoutedTransformer<B>,
    dir: &Path,
    options: &ExportOptions,
) -> Result<()> {
    let mut model = model.clone();
    let names = parameter_names(&model);
    let mut shards: Vec<Vec<(String, Slot)>> = vec![Vec::new()];
    let mut shard_bytes = 0u64;
    let mut total_bytes = 0u64;
    for (name, slot) in names {
        let bytes = (numel(&mut model, slot) * options.dtype.bytes()) as u64;
        if shard_bytes + bytes > options.max_shard_bytes && !shards.last().unwrap().is_empty() {
            shards.push(Vec::new());
            shard_bytes = 0;
        }
        shard_bytes += bytes;
        total_bytes += bytes;
        shards.last_mut().unwrap().push((name, slot));
    }
    let count = shards.len();
    let file_name = |i: usize| {
        if count == 1 {
            SINGLE_FILE.to_string()
        } else {
            format!("model-{:05}-of-{count:05}.safetensors", i + 1)
        }
    };
    let mut weight_map = BTreeMap::new();
    for (i, shard) in shards.iter().enumerate() {
        let tensors = shard
            .iter()
            .map(|(name, slot)| {
                let (shape, values) = hf_tensor(&mut model, *slot);
                (name.clone(), shape, encode(options.dtype, &values))
            })
            .collect::<Vec<_>>();
        let views = tensors
            .iter()
            .map(|(name, shape, bytes)| {
                TensorView::new(safetensors_dtype(options.dtype), shape.clone(), bytes)
                    .map(|view| (name.clone(), view))
                    .map_err(|e| HfError::Unsupported(format!("tensor `{name}`: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let path = dir.join(file_name(i));
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(views, Some(metadata), &path).map_err(|e| {
            HfError::Safetensors {
                path: path.clone(),
                message: e.to_string(),
            }
        })?;
        for (name, _) in shard {
            weight_map.insert(name.clone(), file_name(i));
        }
    }
    if count > 1 {
        let index = json!({ "metadata": { "total_size": total_bytes }, "weight_map": weight_map });
        let path = dir.join(INDEX_FILE);
        let text = serde_json::to_string_pretty(&index).expect("index serializes");
        fs::write(&path, text + "\n").map_err(|e| HfError::io(&path, e))?;
    }
    Ok(())
}

fn numel<B: Backend>(model: &mut RoutedTransformer<B>, slot: Slot) -> usize {
    match slot.layout() {
        Layout::Vector => vector(model, slot).lazy_shape().num_elements(),
        _ => matrix(model, slot).lazy_shape().num_elements(),
    }
}

/// The parameter at `slot` in checkpoint layout: shape and f32 values.
fn hf_tensor<B: Backend>(model: &mut RoutedTransformer<B>, slot: Slot) -> (Vec<usize>, Vec<f32>) {
    let host = |data: burn::tensor::TensorData| {
        data.convert::<f32>()
            .into_vec::<f32>()
            .expect("converted to f32")
    };
    match slot.layout() {
        Layout::Vector => {
            let tensor = vector(model, slot).val();
            (tensor.dims().to_vec(), host(tensor.into_data()))
        }
        layout => {
            let tensor = matrix(model, slot).val();
            let [rows, cols] = tensor.dims();
            let values = host(tensor.into_data());
            if layout == Layout::LinearWeight {
                (vec![cols, rows], transpose(&values, rows, cols))
            } else {
                (vec![rows, cols], values)
            }
        }
    }
}
