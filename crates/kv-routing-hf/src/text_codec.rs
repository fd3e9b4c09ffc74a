//! Text to tokens for any model this crate loads: the byte-level tokenizer (token `i` is byte
//! `i`, vocabulary 256) of models trained from scratch by kv-routing-train, or a pretrained
//! model's Hugging Face tokenizer, behind [`TextCodec`].

use crate::error::Result;
use crate::tokenizer::HfTokenizer;

/// How a model's text maps to tokens.
#[derive(Debug, Clone)]
pub enum TextCodec {
    /// One token per UTF-8 byte.
    Bytes,
    /// A `tokenizer.json` (boxed: a tokenizer is large, and models without one are common).
    Hf(Box<HfTokenizer>),
}

impl From<Option<HfTokenizer>> for TextCodec {
    fn from(tokenizer: Option<HfTokenizer>) -> Self {
        tokenizer.map_or(TextCodec::Bytes, |t| TextCodec::Hf(Box::new(t)))
    }
}

impl TextCodec {
    /// Tokens of a prompt (with the special tokens a Hugging Face tokenizer adds, e.g. BOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            TextCodec::Bytes => Ok(encode(text)),
            TextCodec::Hf(tokenizer) => tokenizer.encode(text),
        }
    }

    /// Text of generated tokens.
    pub fn decode(&self, tokens: &[u32]) -> Result<String> {
        match self {
            TextCodec::Bytes => Ok(decode(tokens)),
            TextCodec::Hf(tokenizer) => tokenizer.decode(tokens),
        }
    }

    /// `bytes` or `tokenizer.json`, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            TextCodec::Bytes => "bytes",
            TextCodec::Hf(_) => "tokenizer.json",
        }
    }
}

/// Vocabulary size of the byte tokenizer.
pub const BYTE_VOCAB_SIZE: usize = 256;

/// UTF-8 text to byte tokens.
pub fn encode(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}

/// Byte tokens to text; invalid UTF-8 (a model can emit any byte) is replaced by `U+FFFD`, and
/// ids above 255 (impossible with this tokenizer's models) by `?`.
pub fn decode(tokens: &[u32]) -> String {
    let bytes: Vec<u8> = tokens
        .iter()
        .map(|&t| u8::try_from(t).unwrap_or(b'?'))
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_utf8() {
        let text = "key=42 · ü";
        assert_eq!(decode(&encode(text)), text);
        assert_eq!(encode("A"), vec![65]);
    }
}
