//! Loading models for kv-routing: Hugging Face directories, GGUF files and the training
//! checkpoints of kv-routing-train, and export back to Hugging Face layout.
//!
//! - [`load_model_dir`] loads whatever a program is pointed at — a Hugging Face checkpoint, a
//!   GGUF file or a training checkpoint — as a [`LoadedModel`] with its [`TextCodec`], routing
//!   history and serving plan, and exports it ([`LoadedModel::export`]). It only reads: a
//!   directory whose commit was interrupted is read from its previous state, not repaired
//!   ([`StagedDir::committed`]).
//! - [`load_pretrained`] reads a checkpoint directory (`config.json`, `model.safetensors` or
//!   sharded safetensors with their index, `tokenizer.json`) of a Llama, Mistral, Qwen2 or Qwen3
//!   model, or a GGUF file of the same families ([`gguf`]), into a
//!   [`RoutedTransformer`](kv_routing::RoutedTransformer), so it can be fine-tuned with
//!   stochastic routing and served with any cache plan.
//! - [`run_checkpoint`] reads the model half of a training checkpoint (its configuration's
//!   model and routing, its Burn weights) without the training crate; [`record`] reads Burn
//!   records of possibly damaged files safely.
//! - [`save_pretrained`] writes a model back in the same layout, with the routing it was trained
//!   with under `kv_routing` in `config.json` ([`RoutingMetadata`]), through a [`StagedDir`]
//!   (all or nothing).
//! - [`HfTokenizer`] wraps `tokenizer.json`; [`TextCodec`] is it or the byte tokenizer.
//!
//! Name and layout mapping: [`parameter_map`]; supported configurations: [`hf_config`].
//!
//! # Memory-mapped files
//! The safetensors and GGUF readers memory-map their files (a checkpoint is read once, in place,
//! without a copy in memory). A map is only as stable as its file: the loaders' contract is that
//! no process modifies or truncates a checkpoint file while it is being loaded or a
//! [`gguf::GgufFile`] is open. Breaking it is undefined behaviour in Rust's terms (in practice a
//! `SIGBUS` when a truncated page is touched, or torn values), which no check of ours can catch.
//! Load a copy of files that something else may be rewriting.

#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

mod error;
mod export;
pub mod gguf;
pub mod hf_config;
mod load;
mod model_dir;
mod msgpack_bounds;
pub mod parameter_map;
pub mod record;
mod routing_metadata;
pub mod run_checkpoint;
mod safetensors_files;
mod staged_dir;
pub mod text_codec;
mod tokenizer;

pub use error::{HfError, Result};
pub use export::{save_pretrained, ExportDtype, ExportOptions};
pub use gguf::is_gguf_file;
pub use hf_config::{Architecture, HfConfig};
pub use load::{
    is_hf_checkpoint, is_pretrained, load_pretrained, LoadOptions, PretrainedModel, WeightStorage,
    CONFIG_FILE, MAX_POSITIONS,
};
pub use model_dir::{end_of_sequence_ids, load_model_dir, load_model_dir_with, LoadedModel};
pub use routing_metadata::{RoutingMetadata, ROUTING_METADATA_VERSION};
pub use run_checkpoint::{PretrainedBase, TrainingRun};
pub use safetensors_files::{SafetensorsFiles, INDEX_FILE, SINGLE_FILE};
pub use staged_dir::{copy_tokenizer_files, StagedDir};
pub use text_codec::TextCodec;
pub use tokenizer::{
    tokenizer_file, HfTokenizer, GENERATION_CONFIG_FILE, TOKENIZER_FILE, TOKENIZER_FILES,
};
