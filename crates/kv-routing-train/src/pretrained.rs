//! Model directories of every kind behind one loader — a training checkpoint of this crate, a
//! Hugging Face checkpoint or a GGUF file — and their export to Hugging Face layout.
//!
//! Loading lives in kv-routing-hf, which reads the model half of this crate's checkpoints on
//! its own (so that inference loads models without the training crate); the items are named
//! here too for the code that loads through the training crate's paths.

pub use kv_routing_hf::{
    end_of_sequence_ids, load_model_dir, load_model_dir_with, tokenizer_file, LoadedModel,
    PretrainedBase, WeightStorage,
};
