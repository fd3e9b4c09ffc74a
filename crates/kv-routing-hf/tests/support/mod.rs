//! Test support: random checkpoints in Hugging Face layout, and an independent f64 reference of
//! the Hugging Face models computed straight from those tensors.

// Each test binary uses part of the support code.
#[allow(dead_code)]
pub mod checkpoint_builder;
#[allow(dead_code)]
pub mod comparison;
#[allow(dead_code)]
pub mod fuzz;
#[allow(dead_code)]
pub mod gguf_writer;
#[allow(dead_code)]
pub mod hf_reference;
