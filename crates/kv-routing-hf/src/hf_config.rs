//! `config.json` of a Hugging Face Llama-family checkpoint and its translation to and from
//! [`RoutedTransformerConfig`].
//!
//! The supported families differ only in configuration, never in code paths of the model:
//!
//! | `model_type` | q/k/v bias | output bias | q/k norm |
//! |---|---|---|---|
//! | `llama`, `mistral` | `attention_bias` | `attention_bias` | no |
//! | `qwen2` | always | no | no |
//! | `qwen3` | `attention_bias` | `attention_bias` | yes |
//!
//! plus GQA (`num_key_value_heads`), `head_dim`, `rope_theta`, `rope_scaling` (`linear`,
//! `llama3`), `rms_norm_eps` and `tie_word_embeddings`. Settings that would change the
//! computation in ways the model does not implement (sliding-window attention, MLP biases, an
//! activation other than SiLU, other rope scalings) are rejected by name rather than ignored.

use std::path::Path;

use kv_routing::{RopeScaling, RoutedTransformerConfig};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{HfError, Result};
use crate::routing_metadata::RoutingMetadata;

/// The model families this crate loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `LlamaForCausalLM` (Llama 2, Llama 3.x, and many derivatives).
    Llama,
    /// `MistralForCausalLM`.
    Mistral,
    /// `Qwen2ForCausalLM` (also Qwen2.5).
    Qwen2,
    /// `Qwen3ForCausalLM` (dense).
    Qwen3,
}

impl Architecture {
    /// From `config.json`'s `model_type`.
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "llama" => Some(Self::Llama),
            "mistral" => Some(Self::Mistral),
            "qwen2" => Some(Self::Qwen2),
            "qwen3" => Some(Self::Qwen3),
            _ => None,
        }
    }

    /// `config.json`'s `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
        }
    }

    /// The `transformers` class name, for `architectures`.
    pub fn class_name(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Mistral => "MistralForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Qwen3 => "Qwen3ForCausalLM",
        }
    }
}

/// The fields of `config.json` the model depends on; every other field is kept in `extra` and
/// written back unchanged on export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HfConfig {
    /// `llama`, `mistral`, `qwen2` or `qwen3`.
    pub model_type: String,
    /// `transformers` class names, e.g. `["LlamaForCausalLM"]`.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Hidden width of the MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA). Default: `num_attention_heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    /// Head size. Default: `hidden_size / num_attention_heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon. Default: 1e-6.
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// Rotary base. Default: 10000.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Rotary scaling, as written by `transformers` (`rope_type` or legacy `type`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Value>,
    /// Longest context the model was trained for. Default: 2048.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_position_embeddings: Option<usize>,
    /// The LM head shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Biases on the attention projections (Llama, Qwen3).
    #[serde(default, skip_serializing_if = "is_false")]
    pub attention_bias: bool,
    /// Biases on the MLP projections (unsupported when true).
    #[serde(default, skip_serializing_if = "is_false")]
    pub mlp_bias: bool,
    /// MLP activation; must be `silu`.
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// Sliding attention window (Mistral, Qwen); supported only when it covers the context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// Qwen's switch for the sliding window (unsupported when true).
    #[serde(default, skip_serializing_if = "is_false")]
    pub use_sliding_window: bool,
    /// kv-routing's own block: the routing the weights were trained with and the plan to serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_routing: Option<RoutingMetadata>,
    /// Every other field, kept as read.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}

fn default_rope_theta() -> f64 {
    10000.0
}

fn default_hidden_act() -> String {
    "silu".into()
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// Context length used when `config.json` has no `max_position_embeddings`.
const DEFAULT_MAX_POSITIONS: usize = 2048;

impl HfConfig {
    /// Reads and parses `path` (a `config.json`).
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| HfError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| HfError::config(path, e.to_string()))
    }

    /// Writes this config as pretty JSON to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(|e| HfError::io(path, e))?;
        std::fs::write(path, json + "\n").map_err(|e| HfError::io(path, e))
    }

    /// The architecture named by `model_type`.
    pub fn architecture(&self) -> Result<Architecture> {
        Architecture::from_model_type(&self.model_type).ok_or_else(|| {
            HfError::Unsupported(format!(
                "model_type `{}` (architectures {:?}); supported: llama, mistral, qwen2, qwen3",
                self.model_type, self.architectures
            ))
        })
    }

    /// The context length of the checkpoint.
    pub fn max_positions(&self) -> usize {
        self.max_position_embeddings
            .unwrap_or(DEFAULT_MAX_POSITIONS)
    }

    /// The model configuration of this checkpoint with rotary tables for `max_seq_len`
    /// positions (default: `max_position_embeddings`), weights zero-initialized (they are
    /// about to be loaded). Rejects settings the model cannot honour, naming the field.
    pub fn model_config(&self, max_seq_len: Option<usize>) -> Result<RoutedTransformerConfig> {
        let architecture = self.architecture()?;
        let max_seq_len = max_seq_len.unwrap_or(self.max_positions());
        if self.hidden_act != "silu" {
            return Err(HfError::Unsupported(format!(
                "hidden_act `{}` (only `silu` is implemented)",
                self.hidden_act
            )));
        }
        if self.mlp_bias {
            return Err(HfError::Unsupported("mlp_bias = true".into()));
        }
        if self.use_sliding_window {
            return Err(HfError::Unsupported(
                "use_sliding_window = true (sliding-window attention is not implemented)".into(),
            ));
        }
        if let Some(layer_types) = self.extra.get("layer_types").and_then(Value::as_array) {
            if layer_types.iter().any(|t| t != "full_attention") {
                return Err(HfError::Unsupported(
                    "layer_types with sliding attention layers".into(),
                ));
            }
        }
        // Mistral applies its window whenever it is set; it changes nothing while the context
        // fits in it.
        if architecture == Architecture::Mistral {
            if let Some(window) = self.sliding_window.filter(|&w| w < max_seq_len) {
                return Err(HfError::Unsupported(format!(
                    "sliding_window = {window} is smaller than the context {max_seq_len}; \
                     load with max_seq_len <= {window}"
                )));
            }
        }
        let qkv_bias = architecture == Architecture::Qwen2 || self.attention_bias;
        let output_bias = architecture != Architecture::Qwen2 && self.attention_bias;
        Ok(RoutedTransformerConfig::new(
            self.vocab_size,
            self.hidden_size,
            self.num_hidden_layers,
            self.num_attention_heads,
            self.intermediate_size,
        )
        .with_n_kv_heads(self.num_key_value_heads)
        .with_head_dim(self.head_dim)
        .with_max_seq_len(max_seq_len)
        .with_rope_theta(self.rope_base()?)
        .with_rope_scaling(self.parse_rope_scaling()?)
        .with_norm_eps(self.rms_norm_eps)
        .with_init_std(0.0)
        .with_qkv_bias(qkv_bias)
        .with_output_bias(output_bias)
        .with_qk_norm(architecture == Architecture::Qwen3)
        .with_tie_embeddings(self.tie_word_embeddings))
    }

    /// A config describing `model` in the closest family: Qwen3 when it normalizes q/k, Qwen2
    /// when only q/k/v carry biases, Llama otherwise. `base` (the config the weights were
    /// loaded from) supplies every field the model does not determine.
    pub fn describing(model: &RoutedTransformerConfig, base: Option<&HfConfig>) -> Result<Self> {
        let architecture = if model.qk_norm {
            Architecture::Qwen3
        } else if model.qkv_bias && !model.output_bias {
            Architecture::Qwen2
        } else {
            match base.and_then(|b| b.architecture().ok()) {
                Some(Architecture::Mistral) if !model.qkv_bias => Architecture::Mistral,
                _ => Architecture::Llama,
            }
        };
        if model.output_bias && !model.qkv_bias {
            return Err(HfError::Unsupported(
                "a bias on the output projection only has no Hugging Face equivalent".into(),
            ));
        }
        if architecture == Architecture::Qwen3 && model.qkv_bias != model.output_bias {
            return Err(HfError::Unsupported(
                "Qwen3 has biases on all four attention projections or none".into(),
            ));
        }
        let mut config = base.cloned().unwrap_or_else(|| HfConfig {
            model_type: String::new(),
            architectures: Vec::new(),
            vocab_size: 0,
            hidden_size: 0,
            intermediate_size: 0,
            num_hidden_layers: 0,
            num_attention_heads: 0,
            num_key_value_heads: None,
            head_dim: None,
            rms_norm_eps: 0.0,
            rope_theta: 0.0,
            rope_scaling: None,
            max_position_embeddings: None,
            tie_word_embeddings: false,
            attention_bias: false,
            mlp_bias: false,
            hidden_act: default_hidden_act(),
            sliding_window: None,
            use_sliding_window: false,
            kv_routing: None,
            extra: Map::new(),
        });
        if architecture.model_type() != config.model_type {
            config.model_type = architecture.model_type().into();
            config.architectures = vec![architecture.class_name().into()];
        }
        let head_dim = model.attention_config().resolved_head_dim();
        config.vocab_size = model.vocab_size;
        config.hidden_size = model.d_model;
        config.intermediate_size = model.d_ff;
        config.num_hidden_layers = model.n_layers;
        config.num_attention_heads = model.n_heads;
        config.num_key_value_heads = Some(model.n_kv_heads.unwrap_or(model.n_heads));
        config.head_dim = Some(head_dim);
        config.rms_norm_eps = model.norm_eps;
        config.rope_theta = model.rope_theta;
        config.rope_scaling = model
            .rope_scaling
            .as_ref()
            .map(|s| serde_json::to_value(s).expect("rope scaling serializes"));
        // A context longer than the checkpoint's came from a load option; keep the original.
        if base.is_none() {
            config.max_position_embeddings = Some(model.max_seq_len);
        }
        config.tie_word_embeddings = model.tie_embeddings;
        config.attention_bias = architecture != Architecture::Qwen2 && model.qkv_bias;
        config.hidden_act = default_hidden_act();
        Ok(config)
    }

    /// `transformers` 5 writes `rope_parameters` (theta and scaling in one object) instead of
    /// `rope_theta` and `rope_scaling`.
    fn rope_parameters(&self) -> Option<&Value> {
        self.extra.get("rope_parameters").filter(|v| v.is_object())
    }

    fn rope_base(&self) -> Result<f64> {
        match self.rope_parameters() {
            Some(parameters) => parameters
                .get("rope_theta")
                .and_then(Value::as_f64)
                .ok_or_else(|| {
                    HfError::Unsupported("rope_parameters.rope_theta is missing".into())
                }),
            None => Ok(self.rope_theta),
        }
    }

    fn parse_rope_scaling(&self) -> Result<Option<RopeScaling>> {
        let scaling = self.rope_parameters().or(self.rope_scaling.as_ref());
        let Some(scaling) = scaling.filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let kind = scaling
            .get("rope_type")
            .or_else(|| scaling.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        let number = |field: &str| {
            scaling.get(field).and_then(Value::as_f64).ok_or_else(|| {
                HfError::Unsupported(format!("rope_scaling.{field} is missing or not a number"))
            })
        };
        match kind {
            "default" => Ok(None),
            "linear" => Ok(Some(RopeScaling::Linear {
                factor: number("factor")?,
            })),
            "llama3" => Ok(Some(RopeScaling::Llama3 {
                factor: number("factor")?,
                low_freq_factor: number("low_freq_factor")?,
                high_freq_factor: number("high_freq_factor")?,
                original_max_position_embeddings: number("original_max_position_embeddings")?
                    as usize,
            })),
            other => Err(HfError::Unsupported(format!(
                "rope_scaling type `{other}` (supported: default, linear, llama3)"
            ))),
        }
    }
}
