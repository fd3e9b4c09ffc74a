//! [`HfTokenizer`]: a checkpoint's `tokenizer.json`, through the `tokenizers` crate.

use std::path::{Path, PathBuf};

use crate::error::{HfError, Result};
use crate::gguf::{is_gguf_file, tokenizer_json, GgufFile};

/// Name of the tokenizer file in a checkpoint directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Generation defaults of a Hugging Face checkpoint (its `eos_token_id` may differ from
/// `config.json`'s).
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";

/// Files of a checkpoint's tokenizer and generation defaults, copied along on export.
pub const TOKENIZER_FILES: [&str; 6] = [
    TOKENIZER_FILE,
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    GENERATION_CONFIG_FILE,
    "chat_template.jinja",
];

/// The file holding the tokenizer of the model at `path`: the GGUF file itself (its metadata
/// describes the tokenizer), or the directory's `tokenizer.json` if it has one.
pub fn tokenizer_file(path: &Path) -> Option<PathBuf> {
    if is_gguf_file(path) {
        return Some(path.to_path_buf());
    }
    let file = path.join(TOKENIZER_FILE);
    file.is_file().then_some(file)
}

/// Parses `tokenizer.json` text.
///
/// `tokenizers` 0.22 panics (an `expect` in its decoder's deserializer) when the JSON syntax
/// breaks inside the `decoder` object, instead of returning an error; found by the loader fuzz
/// test (`tests/fuzz_loaders.rs`). The syntax is therefore checked first, and any panic left is
/// turned into the error it should have been, so a damaged file never takes the program down.
fn parse_tokenizer_json(bytes: &[u8]) -> std::result::Result<tokenizers::Tokenizer, String> {
    serde_json::from_slice::<serde_json::Value>(bytes).map_err(|e| e.to_string())?;
    match std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(bytes)) {
        Ok(parsed) => parsed.map_err(|e| e.to_string()),
        Err(panic) => Err(format!(
            "malformed tokenizer description ({})",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("the tokenizers crate panicked")
        )),
    }
}

/// A Hugging Face tokenizer (BPE, WordPiece, Unigram... whatever `tokenizer.json` describes).
#[derive(Clone)]
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
}

impl std::fmt::Debug for HfTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfTokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl HfTokenizer {
    /// Reads `path`: a `tokenizer.json`, or a GGUF file whose metadata holds the tokenizer.
    pub fn from_file(path: &Path) -> Result<Self> {
        if is_gguf_file(path) {
            return Self::from_gguf(&GgufFile::open(path)?);
        }
        let bytes = std::fs::read(path).map_err(|e| HfError::io(path, e))?;
        let inner = parse_tokenizer_json(&bytes)
            .map_err(|e| HfError::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(Self { inner })
    }

    /// The tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let json = tokenizer_json(gguf)?;
        let inner = parse_tokenizer_json(json.as_bytes()).map_err(|e| {
            HfError::Tokenizer(format!(
                "{}: the tokenizer built from its metadata: {e}",
                gguf.path().display()
            ))
        })?;
        Ok(Self { inner })
    }

    /// The tokenizer of the checkpoint at `path` (see [`tokenizer_file`]), if it has one.
    pub fn from_dir(path: &Path) -> Result<Option<Self>> {
        tokenizer_file(path)
            .map(|file| Self::from_file(&file))
            .transpose()
    }

    /// Writes the tokenizer as a `tokenizer.json` to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner
            .save(path, false)
            .map_err(|e| HfError::Tokenizer(format!("{}: {e}", path.display())))
    }

    /// Token ids of `text`, with the special tokens the tokenizer adds (e.g. BOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.ids(text, true)
    }

    /// Token ids of `text` without special tokens (for training corpora).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        self.ids(text, false)
    }

    fn ids(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| HfError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| HfError::Tokenizer(e.to_string()))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of `token` (e.g. `"</s>"`), if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the loader fuzz test: broken JSON inside the `decoder` object made `tokenizers`
    /// panic ("Helper") instead of failing; it is a typed error now.
    #[test]
    fn broken_json_inside_the_decoder_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKENIZER_FILE);
        std::fs::write(
            &path,
            r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":{"type":"ByteLevel",,"#,
        )
        .unwrap();
        let error = HfTokenizer::from_file(&path).unwrap_err();
        assert!(matches!(error, HfError::Tokenizer(_)), "{error}");
        // The same text straight into `tokenizers` is the panic this guards against.
        let text = std::fs::read(&path).unwrap();
        assert!(std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(&text)).is_err());
    }
}
