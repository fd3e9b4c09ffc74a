//! [`GgufCheckpoint`]: a GGUF model seen as a Hugging Face checkpoint — an [`HfConfig`] built
//! from the metadata, and every tensor under its Hugging Face name, in Hugging Face layout, as
//! f32.
//!
//! # What differs from a Hugging Face checkpoint
//! - **Names**: llama.cpp's (`blk.3.attn_q.weight`) map one to one to `transformers`'
//!   (`model.layers.3.self_attn.q_proj.weight`), see [`hf_name`].
//! - **Shapes**: GGUF lists dimensions innermost first; reversed, they are the Hugging Face
//!   shape (`[out, in]` for a linear weight), and the data is already in that row-major order.
//! - **Rotary layout**: for the `llama` architecture, llama.cpp's converter reorders the rows
//!   of every query and key projection (weights and biases) head by head, so that its
//!   interleaved rotation (pairs `2i, 2i + 1`) computes what `transformers`' `rotate_half`
//!   (pairs `i, i + head_dim / 2`) does: GGUF row `h * head_dim + 2i + j` is Hugging Face row
//!   `h * head_dim + j * head_dim / 2 + i`. [`GgufCheckpoint::read_f32`] undoes it; `qwen2`
//!   and `qwen3` files are stored unpermuted.
//! - **Values**: dequantized to f32 ([`super::dequantize`]).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Map};

use kv_routing::{BlockFormat, BlockWeight};

use super::file::{supported_type_names, GgufFile};
use super::ggml_type::GgmlType;
use super::metadata::MetadataValue;
use crate::error::{HfError, Result};
use crate::hf_config::{Architecture, HfConfig};

/// A GGUF file as a Hugging Face checkpoint.
#[derive(Debug)]
pub struct GgufCheckpoint {
    file: GgufFile,
    config: HfConfig,
    /// Hugging Face name → GGUF name.
    names: BTreeMap<String, String>,
    /// Query and key rows are in llama.cpp's rotary order.
    permuted_qk: bool,
}

/// The Hugging Face name of a GGUF tensor, if it is one the Llama family has.
pub fn hf_name(gguf_name: &str) -> Option<String> {
    let fixed = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.into());
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (tensor, kind) = rest.rsplit_once('.')?;
    let module = match tensor {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    matches!(kind, "weight" | "bias").then(|| format!("model.layers.{layer}.{module}.{kind}"))
}

impl GgufCheckpoint {
    /// Opens `path` and reads its configuration; fails on architectures and settings the model
    /// does not implement, naming them.
    pub fn open(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let mut names = BTreeMap::new();
        for gguf_name in file.tensors().keys() {
            if gguf_name == "rope_freqs.weight" {
                return Err(HfError::Unsupported(
                    "rope_freqs.weight (per-frequency rotary factors, as in Llama 3.1+ GGUF files)"
                        .into(),
                ));
            }
            let name = hf_name(gguf_name).ok_or_else(|| HfError::UnexpectedTensor {
                name: gguf_name.clone(),
                file: path.display().to_string(),
                architecture: "Llama-family GGUF".into(),
            })?;
            // Checked before anything is allocated: a type we cannot read has no size we can
            // check the configuration against either.
            let ggml_type = file.tensors()[gguf_name].ggml_type;
            if !ggml_type.is_supported() {
                return Err(HfError::GgufTensorType {
                    name: gguf_name.clone(),
                    ggml_type: ggml_type.name(),
                    supported: supported_type_names(),
                });
            }
            if let Some(first) = names.insert(name.clone(), gguf_name.clone()) {
                return Err(HfError::Gguf {
                    path: path.to_path_buf(),
                    message: format!("tensors `{first}` and `{gguf_name}` are both `{name}`"),
                });
            }
        }
        let config = gguf_config(&file, &names)?;
        let permuted_qk = config.architecture()? == Architecture::Llama;
        Ok(Self {
            file,
            config,
            names,
            permuted_qk,
        })
    }

    /// The configuration, as `config.json` would hold it.
    pub fn hf_config(&self) -> &HfConfig {
        &self.config
    }

    /// The parsed file.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// Every tensor's Hugging Face name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.keys().map(String::as_str)
    }

    /// The GGUF name of Hugging Face tensor `name`.
    pub fn gguf_name(&self, name: &str) -> Option<&str> {
        self.names.get(name).map(String::as_str)
    }

    /// Hugging Face shape and f32 values of Hugging Face tensor `name`.
    pub fn read_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let gguf_name = self.gguf_name(name).ok_or_else(|| HfError::MissingTensor {
            name: name.into(),
            searched: self.file.path().display().to_string(),
        })?;
        let shape = self.file.tensors()[gguf_name].shape();
        let values = self.file.read_f32(gguf_name)?;
        let values = self.unpermuted(name, &shape, values, shape[1..].iter().product())?;
        Ok((shape, values))
    }

    /// Hugging Face tensor `name` as the blocks the file stores, when it is a matrix in a block
    /// format the model multiplies in place (Q8_0, Q4_1; rows in Hugging Face's order); `None`
    /// for any other type.
    pub fn read_blocks(&self, name: &str) -> Result<Option<BlockWeight>> {
        let gguf_name = self.gguf_name(name).ok_or_else(|| HfError::MissingTensor {
            name: name.into(),
            searched: self.file.path().display().to_string(),
        })?;
        let shape = self.file.tensors()[gguf_name].shape();
        let (ggml_type, bytes) = self.file.read_raw(gguf_name)?;
        let format = match ggml_type {
            GgmlType::Q8_0 => BlockFormat::Q8_0,
            GgmlType::Q4_1 => BlockFormat::Q4_1,
            _ => return Ok(None),
        };
        let &[rows, cols] = shape.as_slice() else {
            return Ok(None);
        };
        let row_bytes = bytes.len().checked_div(rows).unwrap_or(0);
        let bytes = self.unpermuted(name, &shape, bytes, row_bytes)?;
        BlockWeight::new(format, [rows, cols], bytes)
            .map(Some)
            .map_err(|e| HfError::Gguf {
                path: self.file.path().to_path_buf(),
                message: format!("tensor `{gguf_name}`: {e}"),
            })
    }

    /// `values` (rows of `width` elements, Hugging Face tensor `name` of `shape` as the file
    /// stores it) with llama.cpp's rotary row order of query and key projections undone.
    fn unpermuted<T: Copy + Default>(
        &self,
        name: &str,
        shape: &[usize],
        values: Vec<T>,
        width: usize,
    ) -> Result<Vec<T>> {
        if !self.permuted_qk {
            return Ok(values);
        }
        let heads = if name.contains(".q_proj.") {
            self.config.num_attention_heads
        } else if name.contains(".k_proj.") {
            self.config
                .num_key_value_heads
                .unwrap_or(self.config.num_attention_heads)
        } else {
            return Ok(values);
        };
        unpermute_rotary_rows(&values, &[shape[0], width], heads).ok_or_else(|| {
            HfError::TensorShape {
                name: name.into(),
                expected: vec![heads * self.head_dim()],
                actual: shape.to_vec(),
            }
        })
    }

    fn head_dim(&self) -> usize {
        self.config
            .head_dim
            .unwrap_or(self.config.hidden_size / self.config.num_attention_heads.max(1))
    }
}

/// Undoes llama.cpp's rotary row order of a projection with `heads` heads: `values` is
/// `shape[0]` rows (one per output feature) of `shape[1..]` values each. `None` when the rows
/// do not split into heads of an even size.
pub fn unpermute_rotary_rows<T: Copy + Default>(
    values: &[T],
    shape: &[usize],
    heads: usize,
) -> Option<Vec<T>> {
    let rows = *shape.first()?;
    let width: usize = shape[1..].iter().product();
    if heads == 0
        || !rows.is_multiple_of(heads)
        || !(rows / heads).is_multiple_of(2)
        || rows.checked_mul(width) != Some(values.len())
    {
        return None;
    }
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![T::default(); values.len()];
    for head in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let gguf_row = head * head_dim + 2 * i + j;
                let hf_row = head * head_dim + j * half + i;
                out[hf_row * width..(hf_row + 1) * width]
                    .copy_from_slice(&values[gguf_row * width..(gguf_row + 1) * width]);
            }
        }
    }
    Some(out)
}

/// The `config.json` equivalent of the file's `{arch}.*` metadata.
fn gguf_config(file: &GgufFile, names: &BTreeMap<String, String>) -> Result<HfConfig> {
    let path = file.path();
    let malformed = |key: &str, what: &str| HfError::Gguf {
        path: path.to_path_buf(),
        message: format!("metadata {key} must be {what}"),
    };
    let arch = file
        .get("general.architecture")
        .and_then(MetadataValue::as_str)
        .ok_or_else(|| malformed("general.architecture", "a string"))?
        .to_string();
    let architecture = match arch.as_str() {
        "llama" => Architecture::Llama,
        "qwen2" => Architecture::Qwen2,
        "qwen3" => Architecture::Qwen3,
        other => {
            return Err(HfError::Unsupported(format!(
                "GGUF architecture `{other}` (supported: llama, qwen2, qwen3)"
            )))
        }
    };
    let key = |suffix: &str| format!("{arch}.{suffix}");
    let count = |suffix: &str| -> Result<Option<usize>> {
        let key = key(suffix);
        file.get(&key)
            .map(|v| {
                v.as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| malformed(&key, "a non-negative integer"))
            })
            .transpose()
    };
    let required = |suffix: &str| -> Result<usize> {
        count(suffix)?.ok_or_else(|| malformed(&key(suffix), "present"))
    };
    let float = |suffix: &str| -> Result<Option<f64>> {
        let key = key(suffix);
        file.get(&key)
            .map(|v| v.as_f64().ok_or_else(|| malformed(&key, "a number")))
            .transpose()
    };
    let embedding_rows = file
        .tensors()
        .get("token_embd.weight")
        .map(|t| t.shape()[0]);
    let tokens = file
        .get("tokenizer.ggml.tokens")
        .and_then(MetadataValue::as_array)
        .map(|a| a.len());
    let vocab_size = count("vocab_size")?
        .or(embedding_rows)
        .or(tokens)
        .ok_or_else(|| malformed(&key("vocab_size"), "present"))?;
    let heads = required("attention.head_count")?;
    let hidden = required("embedding_length")?;
    let head_dim = count("attention.key_length")?.unwrap_or(hidden / heads.max(1));
    if let Some(value_dim) = count("attention.value_length")?.filter(|&v| v != head_dim) {
        return Err(HfError::Unsupported(format!(
            "{} = {value_dim} differs from the key length {head_dim}",
            key("attention.value_length")
        )));
    }
    if let Some(rotary) = count("rope.dimension_count")?.filter(|&d| d != head_dim) {
        return Err(HfError::Unsupported(format!(
            "partial rotary embeddings ({} = {rotary}, head size {head_dim})",
            key("rope.dimension_count")
        )));
    }
    let context = required("context_length")?;
    if let Some(window) = count("attention.sliding_window")?.filter(|&w| w < context) {
        return Err(HfError::Unsupported(format!(
            "sliding-window attention ({} = {window})",
            key("attention.sliding_window")
        )));
    }
    let rope_scaling = match file
        .get(&key("rope.scaling.type"))
        .map(|v| {
            v.as_str()
                .ok_or_else(|| malformed(&key("rope.scaling.type"), "a string"))
        })
        .transpose()?
    {
        None | Some("none") => None,
        Some("linear") => Some(json!({
            "rope_type": "linear",
            "factor": float("rope.scaling.factor")?
                .ok_or_else(|| malformed(&key("rope.scaling.factor"), "present"))?,
        })),
        Some(other) => {
            return Err(HfError::Unsupported(format!(
                "rope scaling `{other}` ({}; supported: none, linear)",
                key("rope.scaling.type")
            )))
        }
    };
    let mut extra = Map::new();
    for (gguf_key, hf_key) in [
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.padding_token_id", "pad_token_id"),
    ] {
        if let Some(id) = file.get(gguf_key).and_then(MetadataValue::as_u64) {
            extra.insert(hf_key.into(), json!(id));
        }
    }
    // Every id that ends a turn stops generation (Llama 3: end of text and end of turn).
    let mut eos: Vec<u64> = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
        .iter()
        .filter_map(|k| file.get(k).and_then(MetadataValue::as_u64))
        .collect();
    eos.dedup();
    match eos.as_slice() {
        [] => {}
        [id] => {
            extra.insert("eos_token_id".into(), json!(id));
        }
        ids => {
            extra.insert("eos_token_id".into(), json!(ids));
        }
    }
    let has = |name: &str| names.contains_key(name);
    Ok(HfConfig {
        model_type: architecture.model_type().into(),
        architectures: vec![architecture.class_name().into()],
        vocab_size,
        hidden_size: hidden,
        intermediate_size: required("feed_forward_length")?,
        num_hidden_layers: required("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: Some(count("attention.head_count_kv")?.unwrap_or(heads)),
        head_dim: Some(head_dim),
        rms_norm_eps: float("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
        rope_theta: float("rope.freq_base")?.unwrap_or(10000.0),
        rope_scaling,
        max_position_embeddings: Some(context),
        tie_word_embeddings: !has("lm_head.weight"),
        attention_bias: architecture != Architecture::Qwen2
            && has("model.layers.0.self_attn.q_proj.bias"),
        mlp_bias: false,
        hidden_act: "silu".into(),
        sliding_window: None,
        use_sliding_window: false,
        kv_routing: None,
        extra,
    })
}
