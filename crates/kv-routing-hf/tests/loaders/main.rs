//! The loaders' tests in one test binary (each binary monomorphizes the model and Burn for its
//! backends again: 3 to 4 minutes of CPU per file in CI when these were two):
//!
//! - [`gguf`]: GGUF files, every block type, against the dequantized reference and the real
//!   SmolLM2 file where `KV_ROUTING_SMOLLM2_GGUF` names it;
//! - [`checkpoints`]: Hugging Face safetensors checkpoints of every supported family.
//!
//! (`fuzz_loaders` and `block_weight_memory` stay apart: their allocators measure the whole
//! process, which other tests running beside them would move.)

mod checkpoints;
mod gguf;
#[path = "../support/mod.rs"]
mod support;
