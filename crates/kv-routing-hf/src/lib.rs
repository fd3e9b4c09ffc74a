//! Pretrained Llama-family checkpoints for kv-routing: Hugging Face directories and GGUF files.
//!
//! - [`load_pretrained`] reads a checkpoint directory (`config.json`, `model.safetensors` or
//!   sharded safetensors with their index, `tokenizer.json`) of a Llama, Mistral, Qwen2 or Qwen3
//!   model, or a GGUF file of the same families ([`gguf`]), into a
//!   [`RoutedTransformer`](kv_routing::RoutedTransformer), so it can be fine-tuned with
//!   stochastic routing and served with any cache plan.
//! - [`save_pretrained`] writes a model back in the same layout, with the routing it was trained
//!   with under `kv_routing` in `config.json` ([`RoutingMetadata`]).
//! - [`HfTokenizer`] wraps `tokenizer.json`.
//!
//! Name and layout mapping: [`parameter_map`]; supported configurations: [`hf_config`].

#![warn(missing_docs)]

mod error;
mod export;
pub mod gguf;
pub mod hf_config;
mod load;
pub mod parameter_map;
mod routing_metadata;
mod safetensors_files;
mod staged_dir;
mod tokenizer;

pub use error::{HfError, Result};
pub use export::{save_pretrained, ExportDtype, ExportOptions};
pub use gguf::is_gguf_file;
pub use hf_config::{Architecture, HfConfig};
pub use load::{
    is_hf_checkpoint, is_pretrained, load_pretrained, LoadOptions, PretrainedModel, CONFIG_FILE,
    MAX_POSITIONS,
};
pub use routing_metadata::{RoutingMetadata, ROUTING_METADATA_VERSION};
pub use safetensors_files::{SafetensorsFiles, INDEX_FILE, SINGLE_FILE};
pub use staged_dir::{copy_tokenizer_files, StagedDir};
pub use tokenizer::{HfTokenizer, GENERATION_CONFIG_FILE, TOKENIZER_FILE, TOKENIZER_FILES};
