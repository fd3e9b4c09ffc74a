//! Test support: random checkpoints in Hugging Face layout, and an independent f64 reference of
//! the Hugging Face models computed straight from those tensors.

pub mod checkpoint_builder;
pub mod hf_reference;
