//! GGUF files (llama.cpp, Ollama): read a Llama-family model's configuration, tokenizer and
//! tensors from one file.
//!
//! - [`GgufFile`]: the file format, parsed defensively (a damaged file is an error naming what
//!   is wrong, never a panic or an outsized allocation).
//! - [`dequantize`](dequantize::dequantize): F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K,
//!   Q5_K and Q6_K blocks to f32.
//! - [`GgufCheckpoint`]: the model as a Hugging Face checkpoint (names, layouts, the rotary row
//!   order of llama.cpp's `llama` tensors undone, an [`HfConfig`](crate::HfConfig) from the
//!   metadata), which [`load_pretrained`](crate::load_pretrained) loads like a directory.
//! - [`tokenizer_json`]: the `tokenizer.json` equivalent of the `tokenizer.ggml.*` metadata
//!   (byte-level BPE or SentencePiece BPE).

mod checkpoint;
pub mod dequantize;
mod file;
mod ggml_type;
mod metadata;
mod tokenizer;

pub use checkpoint::{hf_name, unpermute_rotary_rows, GgufCheckpoint};
pub use file::{is_gguf_file, supported_type_names, GgufFile, TensorInfo, GGUF_MAGIC};
pub use ggml_type::GgmlType;
pub use metadata::{MetadataArray, MetadataValue};
pub use tokenizer::tokenizer_json;
