//! [`RoutedTransformer`]: a Llama-shaped decoder-only language model with routed attention.
//!
//! One block loop serves every path. [`RoutedTransformer::forward`] (training, evaluation,
//! uncached prefill) and [`RoutedTransformer::forward_cached`] (cached prefill and decode) differ
//! only in the [`KvStore`] they hand to the loop, so a route shares keys/values the same way in
//! both.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::attention::StochasticKvAttentionConfig;
use crate::attention_mask::AttentionMask;
use crate::decoder_block::DecoderBlock;
use crate::error::KvRoutingError;
use crate::feed_forward::SwiGluFeedForwardConfig;
use crate::kv_cache::{KvCacheLayout, KvCacheManager};
use crate::kv_store::{KvStore, SequenceKv};
use crate::memory_budget::{checked_product, MemoryBudget};
use crate::projection::{matmul_last_axis, project};
use crate::rms_norm::rms_norm;
use crate::rope::{RopeAngles, RopeScaling, RotaryEmbedding, RotaryEmbeddingConfig};
use crate::route::Route;
use crate::seeded_init::reinit_seeded;

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

    /// Initializes the model with Burn's initializers (the backend's RNG).
    pub fn init<B: Backend>(&self, device: &B::Device) -> crate::Result<RoutedTransformer<B>> {
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
                .init(device),
            blocks,
            norm: norm(),
            lm_head: (!self.tie_embeddings).then(|| {
                LinearConfig::new(self.d_model, self.vocab_size)
                    .with_bias(false)
                    .with_initializer(self.initializer())
                    .init(device)
            }),
            rope: self.rotary_config().init(device)?,
            vocab_size: self.vocab_size,
        })
    }

    /// Initializes the model with weights drawn on the host from `seed`: the same weights on
    /// every backend (see [`reinit_seeded`]).
    pub fn init_seeded<B: Backend>(
        &self,
        seed: u64,
        device: &B::Device,
    ) -> crate::Result<RoutedTransformer<B>> {
        reinit_seeded(self.init(device)?, seed, self.init_std)
    }
}

/// Decoder-only language model: embedding, routed pre-norm blocks, final RMSNorm, LM head.
#[derive(Module, Debug)]
pub struct RoutedTransformer<B: Backend> {
    /// Token embedding, `[vocab_size, d_model]`.
    pub embedding: Embedding<B>,
    /// Decoder blocks, layer 0 first.
    pub blocks: Vec<DecoderBlock<B>>,
    /// Final norm.
    pub norm: RmsNorm<B>,
    /// Output projection, `[d_model, vocab_size]`; `None` when tied to the embedding.
    pub lm_head: Option<Linear<B>>,
    /// Rotary tables shared by all blocks.
    pub rope: RotaryEmbedding<B>,
    vocab_size: usize,
}

impl<B: Backend> RoutedTransformer<B> {
    /// Number of decoder blocks.
    pub fn n_layers(&self) -> usize {
        self.blocks.len()
    }
    /// Width of the hidden state.
    pub fn d_model(&self) -> usize {
        self.embedding.weight.dims()[1]
    }

    /// A lower bound on the bytes of the activations a forward pass over `batch` sequences of
    /// `seq_len` tokens holds at once (`None` if it overflows `u128`), in the device's float
    /// type: a block's input and output hidden states and the logits; in `training`, the
    /// hidden state every layer keeps for the backward pass and the logits' gradient too. What
    /// attention scores and feed-forward intermediates take comes on top. Checked against a
    /// [`MemoryBudget`] before a batch is run.
    pub fn min_forward_bytes(&self, batch: usize, seq_len: usize, training: bool) -> Option<u128> {
        let (d, v) = (self.d_model() as u128, self.vocab_size() as u128);
        let per_token = if training {
            (self.n_layers() as u128)
                .checked_mul(d)?
                .checked_add(v.checked_mul(2)?)?
        } else {
            d.checked_mul(2)?.checked_add(v)?
        };
        checked_product(&[batch, seq_len, self.float_bytes()])?.checked_mul(per_token)
    }

    /// Bytes of one element of the device's float type (what activations and the KV cache use).
    pub fn float_bytes(&self) -> usize {
        burn::tensor::DType::from(
            burn::tensor::get_device_settings::<B>(&self.device()).float_dtype,
        )
        .size()
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Longest supported sequence.
    pub fn max_seq_len(&self) -> usize {
        self.rope.max_seq_len()
    }

    /// The rotary angles of one step, widened for the query and key/value head counts.
    fn angles(
        &self,
        positions: &[usize],
        batch: usize,
        seq_len: usize,
    ) -> crate::Result<crate::RopeAngles<B>> {
        let heads = [self.blocks[0].attention.n_heads, self.n_kv_heads()];
        Ok(self
            .rope
            .angles(positions, batch, seq_len)?
            .for_heads(&heads))
    }

    /// Key/value heads per layer.
    pub fn n_kv_heads(&self) -> usize {
        self.blocks[0].attention.n_kv_heads
    }

    /// Size of one head.
    pub fn head_dim(&self) -> usize {
        self.blocks[0].attention.head_dim
    }

    /// Full-sequence forward under `route` of a batch of equal-length sequences already on the
    /// device: training, evaluation, uncached prefill. (Host token lists, or sequences of
    /// different lengths: [`RoutedTransformer::forward_tokens`].)
    ///
    /// Ids outside the vocabulary are an error rather than an out-of-bounds gather: one boolean
    /// (whether any id is out of range) is read back from the device to check it.
    ///
    /// # Shapes
    /// - tokens: `[batch, seq_len]`, ids in `0..vocab_size`
    /// - output: `[batch, seq_len, vocab_size]`
    pub fn forward(&self, tokens: Tensor<B, 2, Int>, route: &Route) -> crate::Result<Tensor<B, 3>> {
        route.check_layers(self.n_layers())?;
        let [batch, seq_len] = tokens.dims();
        if batch == 0 || seq_len == 0 {
            return Err(KvRoutingError::InvalidLengths(format!(
                "need at least one sequence and one token (got a [{batch}, {seq_len}] tensor)"
            )));
        }
        let out_of_range = tokens
            .clone()
            .lower_elem(0)
            .bool_or(tokens.clone().greater_equal_elem(self.vocab_size as i64));
        let any_out_of_range = out_of_range.clone().any().into_data().iter::<bool>().next();
        if any_out_of_range == Some(true) {
            let flags: Vec<bool> = out_of_range.into_data().iter::<bool>().collect();
            let ids: Vec<i64> = tokens.into_data().iter::<i64>().collect();
            let index = flags.iter().position(|&f| f).unwrap_or(0);
            return Err(KvRoutingError::TokenOutOfRange {
                // A negative id shows as its two's-complement u32, still out of range.
                token: ids[index] as u32,
                sequence: index / seq_len,
                position: index % seq_len,
                vocab_size: self.vocab_size,
            });
        }
        let positions: Vec<usize> = (0..batch).flat_map(|_| 0..seq_len).collect();
        let rope = self.angles(&positions, batch, seq_len)?;
        let hidden = self.run_blocks(
            tokens,
            &rope,
            &AttentionMask::Causal,
            &mut SequenceKv::new(route.clone()),
        )?;
        Ok(self.vocab_logits(hidden))
    }

    /// Full-sequence forward under `route` of host token lists, which may differ in length:
    /// shorter ones are padded internally and the padding is hidden from attention. Logits at
    /// positions beyond a sequence's length are meaningless.
    ///
    /// # Shapes
    /// - tokens: `batch` lists of up to `max_len` ids
    /// - output: `[batch, max_len, vocab_size]`
    pub fn forward_tokens(
        &self,
        tokens: &[Vec<u32>],
        route: &Route,
    ) -> crate::Result<Tensor<B, 3>> {
        route.check_layers(self.n_layers())?;
        let lengths: Vec<usize> = tokens.iter().map(Vec::len).collect();
        if let Some(sequence) = lengths.iter().position(|&n| n == 0) {
            return Err(KvRoutingError::InvalidLengths(format!(
                "sequence {sequence} is empty"
            )));
        }
        let (ids, batch, seq_len) = self.token_tensor(tokens)?;
        let positions: Vec<usize> = (0..batch).flat_map(|_| 0..seq_len).collect();
        let rope = self.angles(&positions, batch, seq_len)?;
        let key_valid: Vec<bool> = lengths
            .iter()
            .flat_map(|&n| (0..seq_len).map(move |j| j < n))
            .collect();
        let mask = AttentionMask::causal_with_key_validity(
            &key_valid,
            batch,
            seq_len,
            seq_len,
            &self.device(),
        )?;
        let hidden = self.run_blocks(ids, &rope, &mask, &mut SequenceKv::new(route.clone()))?;
        Ok(self.vocab_logits(hidden))
    }

    /// KV cache bytes per token of one sequence under `route`, in the float type caches take on
    /// this model's device (computed, nothing allocated).
    pub fn kv_bytes_per_token(&self, route: &Route) -> crate::Result<usize> {
        route.check_layers(self.n_layers())?;
        let layout = KvCacheLayout {
            batch_size: 1,
            n_layers: self.n_layers(),
            n_kv_heads: self.n_kv_heads(),
            head_dim: self.head_dim(),
            capacity: 1,
        };
        Ok(layout.bytes_for(route, self.float_bytes()))
    }

    /// A cache for `batch_size` sequences of up to `capacity` slots under `route`.
    pub fn new_cache(
        &self,
        batch_size: usize,
        capacity: usize,
        route: Route,
    ) -> crate::Result<KvCacheManager<B>> {
        self.new_cache_within(batch_size, capacity, route, &MemoryBudget::UNLIMITED)
    }

    /// [`RoutedTransformer::new_cache`], refused before any allocation when the cache would
    /// exceed `budget` (the error gives the bytes it needs).
    pub fn new_cache_within(
        &self,
        batch_size: usize,
        capacity: usize,
        route: Route,
        budget: &MemoryBudget,
    ) -> crate::Result<KvCacheManager<B>> {
        KvCacheManager::new_within(
            KvCacheLayout {
                batch_size,
                n_layers: self.n_layers(),
                n_kv_heads: self.n_kv_heads(),
                head_dim: self.head_dim(),
                capacity,
            },
            route,
            &self.device(),
            budget,
        )
    }

    /// Cached forward: appends `tokens[b]` (zero or more new tokens of sequence `b`) to `cache`
    /// and returns the logits of every appended slot, under the cache's route.
    ///
    /// Prefill is one call with the prompts; decoding is one call per token. Sequences may bring
    /// different numbers of tokens; a step is all-or-nothing (see [`KvCacheManager`]).
    ///
    /// # Shapes
    /// - output: `[batch, max_new, vocab_size]`
    pub fn forward_cached(
        &self,
        tokens: &[Vec<u32>],
        cache: &mut KvCacheManager<B>,
    ) -> crate::Result<Tensor<B, 3>> {
        let hidden = self.hidden_cached(tokens, cache)?;
        Ok(self.vocab_logits(hidden))
    }

    /// Like [`RoutedTransformer::forward_cached`] but returns only the logits of each sequence's
    /// last new token, and projects only those onto the vocabulary. Rows of sequences that
    /// brought no token are meaningless.
    ///
    /// # Shapes
    /// - output: `[batch, vocab_size]`
    pub fn forward_cached_last(
        &self,
        tokens: &[Vec<u32>],
        cache: &mut KvCacheManager<B>,
    ) -> crate::Result<Tensor<B, 2>> {
        let hidden = self.hidden_cached(tokens, cache)?;
        let [batch, step_len, d_model] = hidden.dims();
        let rows: Vec<i64> = tokens
            .iter()
            .enumerate()
            .map(|(b, t)| (b * step_len + t.len().saturating_sub(1)) as i64)
            .collect();
        let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [batch]), &self.device());
        let last = hidden.reshape([batch * step_len, d_model]).select(0, rows);
        Ok(self.vocab_logits(last))
    }

    /// Final norm and projection onto the vocabulary (the LM head, or the transposed embedding
    /// when tied) of the last blocks' output.
    ///
    /// # Shapes
    /// - hidden: `[..., d_model]`
    /// - output: `[..., vocab_size]`
    pub fn vocab_logits<const D: usize>(&self, hidden: Tensor<B, D>) -> Tensor<B, D> {
        let normed = rms_norm(&self.norm, hidden);
        match &self.lm_head {
            Some(head) => project(head, normed),
            // A rank-2 product with the transposed embedding *view*: backends multiply by its
            // strides as they are. Raising the view's rank instead (`unsqueeze`) made flex copy
            // the whole `[vocab, d_model]` matrix on every call.
            None => matmul_last_axis(normed, self.embedding.weight.val().transpose()),
        }
    }

    fn hidden_cached(
        &self,
        tokens: &[Vec<u32>],
        cache: &mut KvCacheManager<B>,
    ) -> crate::Result<Tensor<B, 3>> {
        let layout = cache.layout();
        if layout.n_layers != self.n_layers()
            || layout.n_kv_heads != self.n_kv_heads()
            || layout.head_dim != self.head_dim()
        {
            return Err(KvRoutingError::ShapeMismatch {
                context: "cache layout (n_layers, n_kv_heads, head_dim) for this model".into(),
                expected: vec![self.n_layers(), self.n_kv_heads(), self.head_dim()],
                actual: vec![layout.n_layers, layout.n_kv_heads, layout.head_dim],
            });
        }
        let new_tokens: Vec<usize> = tokens.iter().map(Vec::len).collect();
        let (ids, batch, step_len) = self.token_tensor(tokens)?;
        let mut step = cache.begin_step(&new_tokens, step_len)?;
        let rope = self.angles(step.positions(), batch, step_len)?;
        let mask = step.mask()?;
        let hidden = self.run_blocks(ids, &rope, &mask, &mut step)?;
        step.commit()?;
        Ok(hidden)
    }

    /// The block loop shared by every path, on the backend's compute threads
    /// ([`crate::compute_threads`]).
    fn run_blocks(
        &self,
        ids: Tensor<B, 2, Int>,
        rope: &RopeAngles<B>,
        mask: &AttentionMask<B>,
        store: &mut (impl KvStore<B> + Send),
    ) -> crate::Result<Tensor<B, 3>> {
        crate::compute_threads::run::<B, _>(|| {
            let mut x = self.embedding.forward(ids);
            for (layer, block) in self.blocks.iter().enumerate() {
                x = block.forward(layer, x, rope, mask, store)?;
            }
            Ok(x)
        })
    }

    /// Validates token ids and uploads them right-padded (with id 0) as `[batch, max_len]`.
    fn token_tensor(
        &self,
        tokens: &[Vec<u32>],
    ) -> crate::Result<(Tensor<B, 2, Int>, usize, usize)> {
        let batch = tokens.len();
        let seq_len = tokens.iter().map(Vec::len).max().unwrap_or(0);
        if batch == 0 || seq_len == 0 {
            return Err(KvRoutingError::InvalidLengths(format!(
                "need at least one sequence and one token (got {batch} sequences of at most {seq_len} tokens)"
            )));
        }
        let mut ids = vec![0i64; batch * seq_len];
        for (sequence, sequence_tokens) in tokens.iter().enumerate() {
            for (position, &token) in sequence_tokens.iter().enumerate() {
                if token as usize >= self.vocab_size {
                    return Err(KvRoutingError::TokenOutOfRange {
                        token,
                        sequence,
                        position,
                        vocab_size: self.vocab_size,
                    });
                }
                ids[sequence * seq_len + position] = token as i64;
            }
        }
        let ids = Tensor::from_data(TensorData::new(ids, [batch, seq_len]), &self.device());
        Ok((ids, batch, seq_len))
    }

    /// The device holding the weights.
    pub fn device(&self) -> B::Device {
        self.embedding.weight.device()
    }
}
