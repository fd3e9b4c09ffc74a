//! [`RoutedTransformer`]: a Llama-shaped decoder-only language model with routed attention.
//!
//! One block loop serves every path. [`RoutedTransformer::forward`] and
//! [`RoutedTransformer::forward_tokens`] (training, evaluation, uncached prefill) and
//! [`RoutedTransformer::forward_cached`] (cached prefill and decode) differ only in the
//! [`KvStore`](crate::KvStore) they hand to the loop, so a route shares keys/values
//! the same way in all of them.
//!
//! One concept per file:
//! - `config`: [`RoutedTransformerConfig`], its validation, parameter count and initializers.
//! - `tokens`: token ids against the vocabulary: checked on the host where they come from the
//!   host, never read back from the device where they come from the device.
//! - `forward`: the full-sequence forward passes, the shared block loop and the LM head.
//! - `cached`: the forward passes that append to a KV cache.
//! - `cache_factory`: KV caches laid out for this model.
//! - `memory`: bytes of activations and KV caches, computed without allocating.
//! - `mixed`: the cached forward of a batch whose sequences each have their own plan.
//! - `prefix_reuse`: a forward pass recorded layer by layer, and routes rerun from a layer on.
//! - `sharing_adapters`: low-rank weights only sharing plans use, added to the whole model.
//! - `weight_layout`: projection weights in the layout decode steps read fastest.

mod block_weights;
mod cache_factory;
mod cached;
mod config;
mod forward;
mod memory;
mod mixed;
mod prefix_reuse;
mod sharing_adapters;
mod tokens;
mod weight_layout;

use burn::module::Module;
use burn::nn::RmsNorm;
use burn::tensor::backend::Backend;

pub use config::RoutedTransformerConfig;
pub use prefix_reuse::RecordedForward;

use crate::decoder_block::DecoderBlock;
use crate::kv_dtype::{KvDtype, KvRowFormat};
use crate::kv_store::SequenceKv;
use crate::projection::Projection;
use crate::rope::RotaryEmbedding;
use crate::route::Route;
use crate::token_embedding::TokenEmbedding;

/// Decoder-only language model: embedding, routed pre-norm blocks, final RMSNorm, LM head.
#[derive(Module, Debug)]
pub struct RoutedTransformer<B: Backend> {
    /// Token embedding, `[vocab_size, d_model]`.
    pub embedding: TokenEmbedding<B>,
    /// Decoder blocks, layer 0 first.
    pub blocks: Vec<DecoderBlock<B>>,
    /// Final norm.
    pub norm: RmsNorm<B>,
    /// Output projection, `[d_model, vocab_size]`; `None` when tied to the embedding.
    pub lm_head: Option<Projection<B>>,
    /// Rotary tables shared by all blocks.
    pub rope: RotaryEmbedding<B>,
    vocab_size: usize,
    /// What KV caches store (and what full-sequence passes reproduce): a serving choice, not
    /// a parameter, so not saved with the weights.
    kv_dtype: KvDtype,
    /// Whether the sharing adapters have been added into the weights
    /// ([`RoutedTransformer::with_sharing_adapters_merged`]): then only routes that share can
    /// run.
    sharing_merged: bool,
}

impl<B: Backend> RoutedTransformer<B> {
    /// Number of decoder blocks.
    pub fn n_layers(&self) -> usize {
        self.blocks.len()
    }

    /// Width of the hidden state.
    pub fn d_model(&self) -> usize {
        self.embedding.dims()[1]
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Longest supported sequence.
    pub fn max_seq_len(&self) -> usize {
        self.rope.max_seq_len()
    }

    /// Key/value heads per layer.
    pub fn n_kv_heads(&self) -> usize {
        self.blocks[0].attention.n_kv_heads
    }

    /// Size of one head.
    pub fn head_dim(&self) -> usize {
        self.blocks[0].attention.head_dim
    }

    /// The device holding the weights.
    pub fn device(&self) -> B::Device {
        self.embedding.weight.lazy_device()
    }

    /// What this model's KV caches store ([`KvDtype::Native`] unless set).
    pub fn kv_dtype(&self) -> KvDtype {
        self.kv_dtype
    }

    /// The model serving with KV caches that store `dtype`: every cache it makes
    /// ([`RoutedTransformer::new_cache`]), the bytes it reports
    /// ([`RoutedTransformer::kv_bytes_per_token`]), and its full-sequence passes, which read
    /// keys/values as such a cache gives them back (so that perplexity measures what cached
    /// generation computes).
    ///
    /// # Errors
    /// [`KvRoutingError`](crate::KvRoutingError::InvalidConfig) for a float type the backend
    /// cannot store.
    pub fn with_kv_dtype(mut self, dtype: KvDtype) -> crate::Result<Self> {
        dtype.row_format::<B>(&self.device(), self.head_dim())?;
        self.kv_dtype = dtype;
        Ok(self)
    }

    /// How this model's caches store one head's row of one token.
    pub fn kv_row_format(&self) -> crate::Result<KvRowFormat> {
        self.kv_dtype
            .row_format::<B>(&self.device(), self.head_dim())
    }

    /// The store of a full-sequence pass under `route`, reading keys/values as this model's
    /// caches would.
    pub(crate) fn sequence_kv(&self, route: &Route) -> crate::Result<SequenceKv<B>> {
        Ok(match self.kv_dtype {
            KvDtype::Native => SequenceKv::new(route.clone()),
            _ => SequenceKv::stored_as(route.clone(), self.kv_row_format()?),
        })
    }
}
