//! The byte-level tokenizer: token `i` is byte `i`, vocabulary 256.

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
