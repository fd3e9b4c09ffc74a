//! [`RoutedTransformerConfig`]: the shape of a [`RoutedTransformer`], its validation, its
//! parameter count and the initializers that build the model from it.
//!
//! # Contract
//! - [`RoutedTransformerConfig::validate`] accepts exactly the configurations `init` can build;
//!   `init` and `init_seeded` call it first, so an invalid one is an
//!   [`KvRoutingError::InvalidConfig`] before anything is allocated.
//! - [`RoutedTransformerConfig::parameter_count`] is computed from the fields alone and agrees
//!   with the parameters `init` allocates (loaders compare it with a checkpoint first).

use burn::config::Config;
use burn::nn::{EmbeddingConfig, LinearConfig, RmsNormConfig};
use burn::tensor::backend::Backend;

use super::RoutedTransformer;
use crate::attention::StochasticKvAttentionConfig;
use crate::decoder_block::DecoderBlock;
use crate::error::KvRoutingError;
use crate::feed_forward::SwiGluFeedForwardConfig;
use crate::rope::{RopeScaling, RotaryEmbeddingConfig};
use crate::seeded_init::reinit_seeded;
use crate::sharing_adapter::SharingAdapterConfig;

/// Configuration of a [`RoutedTransformer`]. Serializes to JSON with serde.
#[derive(Config, Debug, PartialEq)]
pub struct RoutedTransformerConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of decoder blocks.
    pub n_layers: usize,
    /// Query heads per block.
    pub n_heads: usize,
    /// Key/value heads per block; must divide `n_heads`. Default: `n_heads`.
    #[config(default = "None")]
    pub n_kv_heads: Option<usize>,
    /// Hidden width of the SwiGLU feed-forward blocks.
    pub d_ff: usize,
    /// Longest sequence (rotary table size). Default: 2048.
    #[config(default = 2048)]
    pub max_seq_len: usize,
    /// Rotary base. Default: 10000.
    #[config(default = 10000.0)]
    pub rope_theta: f64,
    /// RMSNorm epsilon. Default: 1e-5.
    #[config(default = 1e-5)]
    pub norm_eps: f64,
    /// Standard deviation of the normal initialization of weight matrices; 0 initializes them
    /// to zero (for weights about to be loaded). Default: 0.02.
    #[config(default = 0.02)]
    pub init_std: f64,
    /// Size of one attention head. Default: `d_model / n_heads`.
    #[config(default = "None")]
    pub head_dim: Option<usize>,
    /// Biases on the query/key/value projections (Qwen2). Default: false.
    #[config(default = false)]
    pub qkv_bias: bool,
    /// Bias on the attention output projection. Default: false.
    #[config(default = false)]
    pub output_bias: bool,
    /// RMSNorm of every query and key head before the rotation (Qwen3), with `norm_eps`.
    /// Default: false.
    #[config(default = false)]
    pub qk_norm: bool,
    /// The LM head is the transposed token embedding (one shared matrix). Default: false.
    #[config(default = false)]
    pub tie_embeddings: bool,
    /// Rotary frequency scaling (Llama 3.1's, or linear). Default: none.
    #[config(default = "None")]
    pub rope_scaling: Option<RopeScaling>,
    /// Low-rank weights that only sharing plans use ([`crate::sharing_adapter`]). Default:
    /// none.
    #[config(default = "None")]
    pub sharing_adapter: Option<SharingAdapterConfig>,
}

impl RoutedTransformerConfig {
    /// Checks every field; [`RoutedTransformerConfig::init`] calls it.
    pub fn validate(&self) -> crate::Result<()> {
        for (name, value) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("n_layers", self.n_layers),
            ("d_ff", self.d_ff),
            ("max_seq_len", self.max_seq_len),
        ] {
            if value == 0 {
                return Err(KvRoutingError::InvalidConfig(format!(
                    "{name} must be >= 1"
                )));
            }
        }
        if self.vocab_size > u32::MAX as usize {
            return Err(KvRoutingError::InvalidConfig(format!(
                "vocab_size {} does not fit u32 token ids",
                self.vocab_size
            )));
        }
        if self.norm_eps.is_nan() || self.norm_eps <= 0.0 {
            return Err(KvRoutingError::InvalidConfig(format!(
                "norm_eps must be positive, got {}",
                self.norm_eps
            )));
        }
        if !(self.init_std >= 0.0 && self.init_std.is_finite()) {
            return Err(KvRoutingError::InvalidConfig(format!(
                "init_std must be finite and >= 0, got {}",
                self.init_std
            )));
        }
        if let Some(adapter) = &self.sharing_adapter {
            adapter.validate()?;
        }
        self.attention_config().validate()
    }

    /// Number of parameters the model has, computed from the configuration alone (`None` if it
    /// overflows `usize`). Loaders compare it with the values a checkpoint holds before
    /// allocating anything, so a corrupted configuration cannot ask for an absurd model.
    pub fn parameter_count(&self) -> Option<usize> {
        let attention = self.attention_config();
        let head_dim = attention.resolved_head_dim();
        let (h, f) = (self.d_model, self.d_ff);
        let q = self.n_heads.checked_mul(head_dim)?;
        let kv = attention.kv_heads().checked_mul(head_dim)?;
        let matrices = [
            h.checked_mul(q)?,
            h.checked_mul(kv)?.checked_mul(2)?,
            q.checked_mul(h)?,
        ];
        let mut block = matrices
            .into_iter()
            .try_fold(h.checked_mul(f)?.checked_mul(3)?, usize::checked_add)?
            .checked_add(2 * h)?;
        if self.qkv_bias {
            block = block.checked_add(q)?.checked_add(2 * kv)?;
        }
        if self.output_bias {
            block = block.checked_add(h)?;
        }
        if self.qk_norm {
            block = block.checked_add(2 * head_dim)?;
        }
        if let Some(adapter) = &self.sharing_adapter {
            for [d_input, d_output] in [[h, q], [h, kv], [h, kv], [q, h], [h, f], [h, f], [f, h]] {
                block = block.checked_add(adapter.delta_parameters(d_input, d_output)?)?;
            }
        }
        let embedding = self.vocab_size.checked_mul(h)?;
        let head = if self.tie_embeddings { 0 } else { embedding };
        block
            .checked_mul(self.n_layers)?
            .checked_add(embedding)?
            .checked_add(head)?
            .checked_add(h)
    }

    /// The configuration of every block's attention.
    pub fn attention_config(&self) -> StochasticKvAttentionConfig {
        StochasticKvAttentionConfig::new(self.d_model, self.n_heads)
            .with_n_kv_heads(self.n_kv_heads)
            .with_head_dim(self.head_dim)
            .with_initializer(self.initializer())
            .with_qkv_bias(self.qkv_bias)
            .with_output_bias(self.output_bias)
            .with_qk_norm(self.qk_norm)
            .with_qk_norm_eps(self.norm_eps)
    }

    /// The configuration of the rotary tables.
    pub fn rotary_config(&self) -> RotaryEmbeddingConfig {
        RotaryEmbeddingConfig::new(
            self.attention_config().resolved_head_dim(),
            self.max_seq_len,
        )
        .with_theta(self.rope_theta)
        .with_scaling(self.rope_scaling.clone())
    }

    fn initializer(&self) -> burn::module::Initializer {
        if self.init_std == 0.0 {
            burn::module::Initializer::Zeros
        } else {
            burn::module::Initializer::Normal {
                mean: 0.0,
                std: self.init_std,
            }
        }
    }

    /// Initializes the model with Burn's initializers (the backend's RNG); sharing adapters, if
    /// configured, are drawn on the host from their own seed.
    pub fn init<B: Backend>(&self, device: &B::Device) -> crate::Result<RoutedTransformer<B>> {
        self.with_adapters(self.init_base(device)?)
    }

    /// The model without its sharing adapters.
    fn init_base<B: Backend>(&self, device: &B::Device) -> crate::Result<RoutedTransformer<B>> {
        self.validate()?;
        let attention = self.attention_config();
        let norm = || {
            RmsNormConfig::new(self.d_model)
                .with_epsilon(self.norm_eps)
                .init(device)
        };
        let blocks = (0..self.n_layers)
            .map(|_| {
                Ok(DecoderBlock {
                    attention_norm: norm(),
                    attention: attention.init(device)?,
                    mlp_norm: norm(),
                    mlp: SwiGluFeedForwardConfig::new(self.d_model, self.d_ff)
                        .with_initializer(self.initializer())
                        .init(device)?,
                })
            })
            .collect::<crate::Result<Vec<_>>>()?;
        Ok(RoutedTransformer {
            embedding: EmbeddingConfig::new(self.vocab_size, self.d_model)
                .with_initializer(self.initializer())
                .init(device)
                .into(),
            blocks,
            norm: norm(),
            lm_head: (!self.tie_embeddings).then(|| {
                LinearConfig::new(self.d_model, self.vocab_size)
                    .with_bias(false)
                    .with_initializer(self.initializer())
                    .init(device)
                    .into()
            }),
            rope: self.rotary_config().init(device)?,
            vocab_size: self.vocab_size,
            kv_dtype: crate::KvDtype::Native,
            sharing_merged: false,
        })
    }

    /// Initializes the model with weights drawn on the host from `seed`: the same weights on
    /// every backend (see [`reinit_seeded`]).
    pub fn init_seeded<B: Backend>(
        &self,
        seed: u64,
        device: &B::Device,
    ) -> crate::Result<RoutedTransformer<B>> {
        self.with_adapters(reinit_seeded(self.init_base(device)?, seed, self.init_std)?)
    }

    /// `model` with this configuration's sharing adapters, if it has any.
    fn with_adapters<B: Backend>(
        &self,
        model: RoutedTransformer<B>,
    ) -> crate::Result<RoutedTransformer<B>> {
        match &self.sharing_adapter {
            Some(adapter) => model.with_sharing_adapters(adapter),
            None => Ok(model),
        }
    }
}
