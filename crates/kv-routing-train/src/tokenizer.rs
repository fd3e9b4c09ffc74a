//! Text to tokens: the byte-level tokenizer of the models trained here (token `i` is byte `i`,
//! vocabulary [`BYTE_VOCAB_SIZE`]), or a pretrained model's Hugging Face tokenizer, behind
//! [`TextCodec`].
//!
//! Defined in kv-routing-hf, where models are loaded (a loaded model carries its codec, and
//! inference needs it without this crate); the training crate names them here.

pub use kv_routing_hf::text_codec::{decode, encode, TextCodec, BYTE_VOCAB_SIZE};
