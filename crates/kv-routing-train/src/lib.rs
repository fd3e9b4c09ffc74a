//! Training and evaluation of routed transformers with stochastic KV routing.
//!
//! - [`data`]: the built-in synthetic corpus (associative recall + structured text) or a UTF-8
//!   file, as deterministic byte-token batches.
//! - [`trainer`]: a run: AdamW with warmup + cosine, global-norm clipping, one random route per
//!   step, validation, checkpoints and exact resume; fine-tuning from a checkpoint with a new
//!   `p`. Its steps run on [`learner`].
//! - [`learner`]: routed training on `burn-train`'s `Learner`, on one device or data-parallel on
//!   several.
//! - [`reference_loop`]: the same semantics as a plain loop, the reference the `Learner` path is
//!   tested and benchmarked against.
//! - [`evaluate`]: loss, perplexity, recall accuracy, [`passkey`] retrieval, KV bytes per token
//!   and decode throughput under each sharing plan; [`report`] and [`plot`] present them.
//! - [`checkpoint`]: a run's checkpoint, written all or nothing and resumed exactly; its model
//!   half is read by kv-routing-hf, where every model directory is loaded ([`pretrained`]
//!   names that loader here), so inference does not need this crate.
//!
//! Generic over Burn backends; the `kv-routing` command-line program drives it.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod adapter_up_rate;
pub mod checkpoint;
pub mod data;
pub mod distillation;
pub mod error;
pub mod evaluate;
pub mod grad_clip;
pub mod learner;
pub mod loss;
pub mod nodes;
pub mod passkey;
pub mod plot;
pub mod pretrained;
pub mod reference_loop;
pub mod report;
pub mod run_dir;
mod run_observer;
mod sample;
pub mod schedule;
pub mod starting_point;
mod synthetic;
pub mod tokenizer;
pub mod train_config;
pub mod trainer;

pub use error::{Result, TrainError};
