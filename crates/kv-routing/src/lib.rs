//! # kv-routing
//!
//! Stochastic KV routing (random cross-layer attention, R-CLA) for [Burn](https://burn.dev),
//! generic over any `B: Backend`.
//!
//! - [`Route`] says which layer's keys/values each layer reads; [`CachePlan`] builds the routes
//!   used at inference from a set of cached layers; [`StochasticRouter`] draws the random routes
//!   used in training.
//! - [`StochasticKvAttention`] is the attention module: grouped-query attention with rotary
//!   embeddings whose keys/values may come from another layer.
//! - [`KvCacheManager`] caches keys/values of a batch for the source layers of a route only.
//! - [`RoutedTransformer`] is a Llama-shaped decoder built from them, with full-sequence and
//!   cached forward passes that route identically, and generation.
//!
//! See `docs/routing.md` for the exact semantics and `docs/architecture.md` for how the pieces
//! fit.

#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

mod attention;
mod attention_mask;
mod block_weight;
mod byte_count;
mod cache_plan;
mod concurrent_passes;
mod decoder_block;
mod error;
mod feed_forward;
mod generation;
mod kernels;
mod key_value;
pub mod kv_cache;
mod kv_dtype;
pub mod kv_quantization;
mod kv_store;
mod memory_budget;
mod mixed_plan_cache;
mod plan_calibration;
mod plan_spec;
mod precision;
mod projection;
mod rms_norm;
mod rope;
mod route;
mod route_draw;
mod routed_transformer;
mod router;
mod seeded_init;
mod serving;
pub mod sharing_adapter;
mod token_embedding;
mod vocab_loss;

pub use attention::{BlockGroup, StochasticKvAttention, StochasticKvAttentionConfig};
pub use attention_mask::{AttentionMask, KeyHoles};
pub use block_weight::{BlockFormat, BlockWeight, BLOCK_VALUES};
pub use cache_plan::CachePlan;
pub use concurrent_passes::join_passes;
pub use decoder_block::DecoderBlock;
pub use error::{KvRoutingError, Result};
pub use feed_forward::{SwiGluFeedForward, SwiGluFeedForwardConfig};
pub use generation::{greedy_tokens, logits_rows, Generation, GenerationConfig, Sampler};
pub use key_value::{Int8KeyValue, KeyValue, StoredKv};
pub use kv_cache::{CacheStep, KvCacheLayout, KvCacheManager};
pub use kv_dtype::{KvDtype, KvRowFormat, INT8_BLOCK};
pub use kv_store::{KvStore, SequenceKv};
pub use memory_budget::MemoryBudget;
pub use mixed_plan_cache::MixedPlanCache;
pub use plan_calibration::{
    CalibrationLevel, CalibrationMeasure, CalibrationProgress, PlanBudget, PlanCalibration,
    PlanCalibrationConfig, PlanSearch,
};
pub use plan_spec::split_plan_list;
pub use precision::Precision;
pub use projection::Projection;
pub use rope::{RopeAngles, RopeScaling, RotaryEmbedding, RotaryEmbeddingConfig, MAX_TABLE_VALUES};
pub use route::Route;
pub use route_draw::RouteDraw;
pub use routed_transformer::{RecordedForward, RoutedTransformer, RoutedTransformerConfig};
pub use router::StochasticRouter;
pub use seeded_init::reinit_seeded;
pub use serving::{ServeConfig, ServeReport, ServeRequest, ServedRequest};
pub use sharing_adapter::{AdapterRows, LowRankDelta, SharingAdapterConfig};
pub use token_embedding::TokenEmbedding;
pub use vocab_loss::{cross_entropy_per_token, distillation_per_token};

/// Compiles the README's example as a doctest so that it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
