//! A `tokenizer.json` (the `tokenizers` crate's format) built from a GGUF file's
//! `tokenizer.ggml.*` metadata, so a GGUF model needs no tokenizer file beside it.
//!
//! Two tokenizer models, as llama.cpp names them in `tokenizer.ggml.model`:
//! - `gpt2`: byte-level BPE (SmolLM2, Llama 3, Qwen2/2.5/3). The vocabulary and merges are
//!   stored as is; the pre-tokenizer regex depends on `tokenizer.ggml.pre` and is the one
//!   llama.cpp uses for it (see [`byte_level_pre_tokenizer`]).
//! - `llama`: SentencePiece BPE (Llama 2, TinyLlama, Mistral 7B v0.1). GGUF stores pieces with
//!   scores but no merges; the merges are rebuilt from the scores (a pair whose concatenation
//!   is a piece merges with that piece's priority, higher scores first), as `transformers`
//!   does when it converts a SentencePiece model. `▁` stands for a space, a space is prepended
//!   to the text, and unknown characters fall back to `<0xNN>` byte pieces.
//!
//! Control tokens (`token_type` 3) become special added tokens, user-defined ones (4) plain
//! added tokens. BOS is prepended when `tokenizer.ggml.add_bos_token` says so (default: yes
//! for `llama`, no for `gpt2`), EOS appended when `add_eos_token` does.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::file::GgufFile;
use super::metadata::MetadataValue;
use crate::error::{HfError, Result};

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_UNKNOWN: i64 = 2;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Llama 3 (`llama-bpe`): numbers in runs of up to three digits.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2 (`qwen2`): single digits.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.json` of `gguf`, as JSON text.
pub fn tokenizer_json(gguf: &GgufFile) -> Result<String> {
    let metadata = TokenizerMetadata::read(gguf)?;
    let value = match metadata.model.as_str() {
        "gpt2" => byte_level_bpe(&metadata, gguf)?,
        "llama" => sentencepiece_bpe(&metadata, gguf)?,
        other => {
            return Err(unsupported(format!(
                "tokenizer.ggml.model `{other}` (supported: gpt2, llama)"
            )))
        }
    };
    Ok(value.to_string())
}

fn unsupported(message: String) -> HfError {
    HfError::Unsupported(message)
}

/// The `tokenizer.ggml.*` entries the tokenizer is built from.
struct TokenizerMetadata<'a> {
    model: String,
    pre: Option<String>,
    tokens: &'a [String],
    token_types: Option<Vec<i64>>,
    bos: Option<u32>,
    eos: Option<u32>,
    unknown: Option<u32>,
    add_bos: Option<bool>,
    add_eos: bool,
}

impl<'a> TokenizerMetadata<'a> {
    fn read(gguf: &'a GgufFile) -> Result<Self> {
        let malformed = |key: &str, what: &str| HfError::Gguf {
            path: gguf.path().to_path_buf(),
            message: format!("{key} must be {what}"),
        };
        let string = |key: &str| -> Result<Option<String>> {
            gguf.get(key)
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or(malformed(key, "a string"))
                })
                .transpose()
        };
        let model = string("tokenizer.ggml.model")?.ok_or_else(|| HfError::Gguf {
            path: gguf.path().to_path_buf(),
            message: "no tokenizer.ggml.model: the file carries no tokenizer".into(),
        })?;
        let tokens = gguf
            .get("tokenizer.ggml.tokens")
            .and_then(MetadataValue::as_array)
            .and_then(|a| a.as_strings())
            .ok_or(malformed("tokenizer.ggml.tokens", "an array of strings"))?;
        let token_types = gguf
            .get("tokenizer.ggml.token_type")
            .map(|v| {
                v.as_array()
                    .and_then(|a| a.to_i64s())
                    .filter(|t| t.len() == tokens.len())
                    .ok_or(malformed(
                        "tokenizer.ggml.token_type",
                        "an integer array as long as the tokens",
                    ))
            })
            .transpose()?;
        let id = |key: &str| -> Result<Option<u32>> {
            gguf.get(key)
                .map(|v| {
                    v.as_u64()
                        .filter(|&id| (id as usize) < tokens.len())
                        .map(|id| id as u32)
                        .ok_or(malformed(key, "a token id below the vocabulary size"))
                })
                .transpose()
        };
        let flag = |key: &str| -> Result<Option<bool>> {
            gguf.get(key)
                .map(|v| v.as_bool().ok_or(malformed(key, "a bool")))
                .transpose()
        };
        Ok(Self {
            model,
            pre: string("tokenizer.ggml.pre")?,
            tokens,
            token_types,
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            unknown: id("tokenizer.ggml.unknown_token_id")?,
            add_bos: flag("tokenizer.ggml.add_bos_token")?,
            add_eos: flag("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
        })
    }

    fn token_type(&self, id: usize) -> i64 {
        self.token_types.as_ref().map_or(1, |types| types[id])
    }

    /// Control and user-defined tokens as `added_tokens` entries.
    fn added_tokens(&self) -> Vec<Value> {
        (0..self.tokens.len())
            .filter_map(|id| {
                let special = match self.token_type(id) {
                    TOKEN_TYPE_CONTROL => true,
                    TOKEN_TYPE_USER_DEFINED => false,
                    _ => return None,
                };
                Some(json!({
                    "id": id,
                    "content": self.tokens[id],
                    "single_word": false,
                    "lstrip": false,
                    "rstrip": false,
                    "normalized": false,
                    "special": special,
                }))
            })
            .collect()
    }

    /// The vocabulary as `token -> id`; a token listed twice keeps its first id.
    fn vocab(&self) -> serde_json::Map<String, Value> {
        let mut vocab = serde_json::Map::new();
        for (id, token) in self.tokens.iter().enumerate() {
            vocab.entry(token.clone()).or_insert(json!(id));
        }
        vocab
    }

    /// BOS (and EOS) around every sequence, as the metadata asks.
    fn post_processor(&self, add_bos_by_default: bool) -> Value {
        let add_bos = self.add_bos.unwrap_or(add_bos_by_default);
        let mut special_tokens = serde_json::Map::new();
        let mut single = Vec::new();
        let mut wrap = |id: Option<u32>, add: bool, single: &mut Vec<Value>| {
            if let Some(id) = id.filter(|_| add) {
                let token = &self.tokens[id as usize];
                special_tokens.insert(
                    token.clone(),
                    json!({"id": token, "ids": [id], "tokens": [token]}),
                );
                single.push(json!({"SpecialToken": {"id": token, "type_id": 0}}));
            }
        };
        wrap(self.bos, add_bos, &mut single);
        single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
        wrap(self.eos, self.add_eos, &mut single);
        let mut pair = single.clone();
        pair.extend(single.iter().map(|piece| {
            let mut piece = piece.clone();
            if let Some(sequence) = piece.get_mut("Sequence") {
                sequence["id"] = json!("B");
            }
            for part in ["Sequence", "SpecialToken"] {
                if let Some(inner) = piece.get_mut(part) {
                    inner["type_id"] = json!(1);
                }
            }
            piece
        }));
        json!({
            "type": "TemplateProcessing",
            "single": single,
            "pair": pair,
            "special_tokens": special_tokens,
        })
    }
}

/// The byte-level split llama.cpp uses for `tokenizer.ggml.pre` (`ByteLevel` with its own regex
/// is the GPT-2 split).
fn byte_level_pre_tokenizer(pre: Option<&str>) -> Result<Value> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |pattern: &str| json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
    Ok(match pre.unwrap_or("default") {
        "default" | "gpt-2" | "gpt2" | "mpt" | "olmo" => byte_level(true),
        // Every digit on its own, then the GPT-2 split.
        "smollm" | "starcoder" | "refact" | "codeshell" => json!({
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)],
        }),
        "llama-bpe" | "llama3" => json!({
            "type": "Sequence",
            "pretokenizers": [split(LLAMA3_PATTERN), byte_level(false)],
        }),
        "qwen2" | "stablelm2" => json!({
            "type": "Sequence",
            "pretokenizers": [split(QWEN2_PATTERN), byte_level(false)],
        }),
        other => {
            return Err(unsupported(format!(
                "tokenizer.ggml.pre `{other}` (supported: default, gpt-2, smollm, starcoder, llama-bpe, qwen2)"
            )))
        }
    })
}

fn byte_level_bpe(metadata: &TokenizerMetadata, gguf: &GgufFile) -> Result<Value> {
    let merges = gguf
        .get("tokenizer.ggml.merges")
        .and_then(MetadataValue::as_array)
        .and_then(|a| a.as_strings())
        .ok_or_else(|| HfError::Gguf {
            path: gguf.path().to_path_buf(),
            message: "a gpt2 tokenizer needs tokenizer.ggml.merges (an array of strings)".into(),
        })?;
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": metadata.added_tokens(),
        "normalizer": null,
        "pre_tokenizer": byte_level_pre_tokenizer(metadata.pre.as_deref())?,
        "post_processor": metadata.post_processor(false),
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": metadata.vocab(),
            "merges": merges,
        },
    }))
}

fn sentencepiece_bpe(metadata: &TokenizerMetadata, gguf: &GgufFile) -> Result<Value> {
    let scores = gguf
        .get("tokenizer.ggml.scores")
        .and_then(MetadataValue::as_array)
        .and_then(|a| a.to_f64s())
        .filter(|s| s.len() == metadata.tokens.len())
        .ok_or_else(|| HfError::Gguf {
            path: gguf.path().to_path_buf(),
            message: "a llama tokenizer needs tokenizer.ggml.scores (floats, one per token)".into(),
        })?;
    let unknown = metadata
        .unknown
        .map(|id| id as usize)
        .or_else(|| {
            (0..metadata.tokens.len()).find(|&id| metadata.token_type(id) == TOKEN_TYPE_UNKNOWN)
        })
        .map(|id| metadata.tokens[id].clone());
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": metadata.added_tokens(),
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
            ],
        },
        "pre_tokenizer": null,
        "post_processor": metadata.post_processor(true),
        "decoder": {
            "type": "Sequence",
            "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": unknown,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": true,
            "byte_fallback": true,
            "ignore_merges": false,
            "vocab": metadata.vocab(),
            "merges": merges_from_scores(metadata, &scores),
        },
    }))
}

/// SentencePiece merges: every split of a normal piece into two pieces of the vocabulary, the
/// merges of higher-scoring pieces first (ties: lower id of the merged piece, then of the
/// left part).
fn merges_from_scores(metadata: &TokenizerMetadata, scores: &[f64]) -> Vec<String> {
    // A token listed twice keeps its first id, as in the vocabulary.
    let mut ids: HashMap<&str, usize> = HashMap::new();
    for (id, token) in metadata.tokens.iter().enumerate() {
        ids.entry(token.as_str()).or_insert(id);
    }
    let mut merges = Vec::new();
    for (id, piece) in metadata.tokens.iter().enumerate() {
        if metadata.token_type(id) != 1 {
            continue;
        }
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            if let (Some(&l), Some(&r)) = (ids.get(left), ids.get(right)) {
                merges.push((id, l, r));
            }
        }
    }
    merges.sort_by(|a, b| {
        scores[b.0]
            .total_cmp(&scores[a.0])
            .then(a.0.cmp(&b.0))
            .then(a.1.cmp(&b.1))
    });
    merges
        .into_iter()
        .map(|(_, l, r)| format!("{} {}", metadata.tokens[l], metadata.tokens[r]))
        .collect()
}
