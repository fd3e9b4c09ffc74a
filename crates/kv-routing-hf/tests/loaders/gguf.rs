//! GGUF files written by the tests: every supported tensor type dequantizes as llama.cpp's own
//! Python package does, models of every type and family load and match the independent f64
//! reference, both tokenizer kinds work, damaged files are errors; and, when
//! `KV_ROUTING_SMOLLM2_GGUF` names the real SmolLM2-135M-Instruct Q4_1 file, greedy text and
//! logits match figures stored from `transformers`.

use crate::support;

use std::path::{Path, PathBuf};

use kv_routing::{BlockFormat, CachePlan, GenerationConfig};
use kv_routing_hf::gguf::{dequantize::dequantize, GgmlType, GgufFile};
use kv_routing_hf::{
    load_pretrained, save_pretrained, ExportOptions, HfError, HfTokenizer, LoadOptions,
    WeightStorage,
};
use serde_json::Value;
use support::checkpoint_builder::{Spec, Tensors};
use support::comparison::{assert_close, host_logits, routes, sources, tokens};
use support::gguf_writer::{
    add_byte_level_tokenizer, byte_level_char, gguf_model, GgufWriter, Meta,
};
use support::hf_reference::HfReference;

type F64 = burn_ndarray::NdArray<f64>;
type Flex = burn_flex::Flex;

/// As in `checkpoints.rs`: burn's RmsNorm squares in f32 even on the f64 backend (about 2e-8
/// relative per norm). The 256-wide models of the k-quant test accumulate more of it (up to
/// 6e-5 seen); a mapping, dequantization or row-order mistake is off by O(1).
const F64_TOLERANCE: f64 = 2e-5;
const WIDE_TOLERANCE: f64 = 2e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Checks the model loaded from `path` against the f64 reference on `tensors` under every route.
fn assert_matches_reference(
    path: &Path,
    spec: &Spec,
    tensors: &Tensors,
    tolerance: f64,
    context: &str,
) {
    let device = Default::default();
    let loaded = load_pretrained::<F64>(path, &LoadOptions::default(), &device)
        .unwrap_or_else(|e| panic!("{context}: {e}"));
    let config = spec.config_json();
    let reference = HfReference::new(&config, tensors);
    for route in routes(spec.layers, 3) {
        let expected = reference.logits(&tokens(), &sources(&route, spec.layers));
        let actual = host_logits(&loaded.model, &tokens(), &route);
        assert_close(
            &actual,
            &expected,
            tolerance,
            &format!("{context}, route {route}"),
        );
    }
}

#[test]
fn dequantizers_match_llama_cpps_gguf_py_on_random_blocks() {
    let text = std::fs::read_to_string(fixture("gguf_quant_blocks.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let mut checked = Vec::new();
    for case in fixture["types"].as_array().unwrap() {
        let ty = GgmlType(case["id"].as_u64().unwrap() as u32);
        let hex = case["bytes"].as_str().unwrap();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let expected: Vec<f64> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let actual = dequantize(ty, &bytes, expected.len()).unwrap();
        for (i, (a, e)) in actual.iter().zip(&expected).enumerate() {
            assert!(
                (*a as f64 - e).abs() <= 1e-6 * (1.0 + e.abs()),
                "{ty}: value {i}: {a} vs gguf-py {e}"
            );
        }
        checked.push(ty);
    }
    for ty in GgmlType::SUPPORTED {
        if ty != GgmlType::F32 {
            assert!(checked.contains(&ty), "{ty} is not in the fixture");
        }
    }
}

/// Rows of 256 values, as the k-quants need.
fn wide_llama() -> Spec {
    Spec {
        vocab: 41,
        hidden: 256,
        intermediate: 256,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
        ..Spec::llama()
    }
}

#[test]
fn llama_models_of_every_tensor_type_match_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let spec = wide_llama();
    for ty in GgmlType::SUPPORTED {
        let (writer, tensors) = gguf_model(&spec, ty, 11);
        let path = write(dir.path(), &format!("{ty}.gguf"), &writer.to_bytes());
        let context = format!("llama, matrices {ty}");
        assert_matches_reference(&path, &spec, &tensors, WIDE_TOLERANCE, &context);
    }
}

#[test]
fn every_family_matches_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    // Rows of 32 and 64 values: whole blocks of the 32-value formats.
    let small = Spec {
        intermediate: 64,
        ..Spec::llama()
    };
    let families = [
        (
            "llama with attention biases (permuted q/k biases), Q8_0",
            Spec {
                attention_bias: true,
                ..small.clone()
            },
            GgmlType::Q8_0,
        ),
        (
            "llama MQA, tied embeddings, F16",
            Spec {
                kv_heads: 1,
                tie: true,
                ..small.clone()
            },
            GgmlType::F16,
        ),
        (
            "qwen2 (q/k/v bias, rows unpermuted), tied, Q4_0",
            Spec {
                model_type: "qwen2",
                tie: true,
                ..small.clone()
            },
            GgmlType::Q4_0,
        ),
        (
            "qwen3 (q/k norm, head_dim 12), BF16",
            Spec {
                model_type: "qwen3",
                head_dim: 12,
                ..small.clone()
            },
            GgmlType::BF16,
        ),
    ];
    for (name, spec, ty) in families {
        let (writer, tensors) = gguf_model(&spec, ty, 5);
        let path = write(dir.path(), "model.gguf", &writer.to_bytes());
        assert_matches_reference(&path, &spec, &tensors, F64_TOLERANCE, name);
    }
}

/// The matrices of a model that hold blocks, with their formats (`None`: floats).
fn matrix_formats(model: &kv_routing::RoutedTransformer<Flex>) -> Vec<Option<BlockFormat>> {
    let mut formats = vec![model.embedding.blocks.as_ref().map(|b| b.format())];
    for block in &model.blocks {
        for projection in block.projections() {
            formats.push(projection.blocks.as_ref().map(|b| b.format()));
        }
    }
    formats
}

#[test]
fn q8_0_and_q4_1_files_keep_their_blocks_and_match_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let spec = wide_llama();
    let device = Default::default();
    for (ty, format) in [
        (GgmlType::Q8_0, BlockFormat::Q8_0),
        (GgmlType::Q4_1, BlockFormat::Q4_1),
    ] {
        let (writer, tensors) = gguf_model(&spec, ty, 5);
        let path = write(dir.path(), &format!("{ty}.gguf"), &writer.to_bytes());
        let options = LoadOptions {
            weights: WeightStorage::AsStored,
            ..LoadOptions::default()
        };
        let loaded = load_pretrained::<Flex>(&path, &options, &device).unwrap();
        // Every matrix as the file stores it (rows of the rotary projections reordered).
        assert!(
            matrix_formats(&loaded.model)
                .iter()
                .all(|f| *f == Some(format)),
            "{ty}"
        );
        let config = spec.config_json();
        let reference = HfReference::new(&config, &tensors);
        for route in routes(spec.layers, 3) {
            let expected = reference.logits(&tokens(), &sources(&route, spec.layers));
            let actual = host_logits(&loaded.model, &tokens(), &route);
            // f32 sums over rows of 256 (the f64 reference's tolerance is for f64).
            assert_close(
                &actual,
                &expected,
                1e-3,
                &format!("{ty} as stored, route {route}"),
            );
        }
    }
}

#[test]
fn any_file_loads_with_every_matrix_in_a_block_format() {
    let dir = tempfile::tempdir().unwrap();
    let spec = wide_llama();
    let device = Default::default();
    let (writer, _) = gguf_model(&spec, GgmlType::Q4_K, 8);
    let path = write(dir.path(), "q4_k.gguf", &writer.to_bytes());
    let float = load_pretrained::<Flex>(&path, &LoadOptions::default(), &device).unwrap();
    assert!(matrix_formats(&float.model).iter().all(Option::is_none));
    // Q4_K is not kept as stored: as-stored leaves it in floats, q8_0 quantizes it.
    let options = |weights| LoadOptions {
        weights,
        ..LoadOptions::default()
    };
    let stored =
        load_pretrained::<Flex>(&path, &options(WeightStorage::AsStored), &device).unwrap();
    assert!(matrix_formats(&stored.model).iter().all(Option::is_none));
    let q8 = load_pretrained::<Flex>(
        &path,
        &options(WeightStorage::Blocks(BlockFormat::Q8_0)),
        &device,
    )
    .unwrap();
    assert!(matrix_formats(&q8.model)
        .iter()
        .all(|f| *f == Some(BlockFormat::Q8_0)));
    let route = CachePlan::full(spec.layers).unwrap().route();
    let (expected, actual) = (
        host_logits(&float.model, &tokens(), &route),
        host_logits(&q8.model, &tokens(), &route),
    );
    // Q8_0 moves each weight by at most half a code step (1/254 of its block's largest); through
    // two random layers the logits move by a few percent (seen: 2.5%), a mapping or row-order
    // mistake by O(1).
    assert_close(&actual, &expected, 5e-2, "q8_0 from q4_k");
    assert_ne!(actual, expected, "the weights were quantized");
}

#[test]
fn a_gguf_model_loads_on_flex_and_exports_to_hugging_face_layout() {
    let dir = tempfile::tempdir().unwrap();
    let spec = wide_llama();
    let (writer, _) = gguf_model(&spec, GgmlType::Q4_K, 2);
    let path = write(dir.path(), "model.gguf", &writer.to_bytes());
    let device = Default::default();
    let loaded = load_pretrained::<Flex>(&path, &LoadOptions::default(), &device).unwrap();
    assert_eq!(loaded.hf_config.model_type, "llama");
    assert_eq!(loaded.hf_config.extra["eos_token_id"], 0);
    let out = dir.path().join("exported");
    save_pretrained(
        &loaded.model,
        &loaded.model_config,
        Some(&loaded.hf_config),
        &out,
        &ExportOptions {
            copy_files_from: Some(path.clone()),
            ..ExportOptions::default()
        },
    )
    .unwrap();
    assert!(out.join("tokenizer.json").is_file());
    let reloaded = load_pretrained::<Flex>(&out, &LoadOptions::default(), &device).unwrap();
    let route = CachePlan::every_kth(spec.layers, 2).unwrap().route();
    assert_eq!(
        host_logits(&loaded.model, &tokens(), &route),
        host_logits(&reloaded.model, &tokens(), &route)
    );
    let prompt = loaded.tokenizer.as_ref().unwrap().encode("abc").unwrap();
    let settings = GenerationConfig {
        max_new_tokens: 6,
        ..GenerationConfig::default()
    };
    let generated = |model: &kv_routing::RoutedTransformer<Flex>| {
        let generation = model
            .generate(std::slice::from_ref(&prompt), &route, &settings)
            .unwrap();
        (generation.tokens, generation.kv_bytes_per_layer)
    };
    assert_eq!(generated(&loaded.model), generated(&reloaded.model));
}

/// A tokenizer-only GGUF file.
fn tokenizer_file(dir: &Path, writer: &GgufWriter) -> HfTokenizer {
    let path = write(dir, "tokenizer.gguf", &writer.to_bytes());
    HfTokenizer::from_file(&path).unwrap()
}

#[test]
fn byte_level_tokenizer_from_metadata_merges_splits_digits_and_keeps_control_tokens() {
    let dir = tempfile::tempdir().unwrap();
    // Every byte, then merged tokens: "Ġt", "he", "Ġthe", and "12" (which the smollm split
    // must never produce: it isolates digits).
    let mut tokens: Vec<String> = vec!["<|im_end|>".into()];
    tokens.extend((0..=255u8).map(|b| byte_level_char(b).to_string()));
    let space = byte_level_char(b' ');
    let merged = [
        format!("{space}t"),
        "he".into(),
        format!("{space}the"),
        "12".into(),
    ];
    tokens.extend(merged.iter().cloned());
    let merges = vec![
        format!("{space} t"),
        "h e".to_string(),
        format!("{space}t he"),
        "1 2".to_string(),
    ];
    let mut types = vec![3];
    types.extend(std::iter::repeat_n(1, tokens.len() - 1));
    let id = |t: &str| tokens.iter().position(|x| x == t).unwrap() as u32;
    let mut writer = GgufWriter::default();
    writer
        .meta("tokenizer.ggml.model", Meta::Str("gpt2".into()))
        .meta("tokenizer.ggml.pre", Meta::Str("smollm".into()))
        .meta("tokenizer.ggml.tokens", Meta::Strs(tokens.clone()))
        .meta("tokenizer.ggml.token_type", Meta::I32s(types.clone()))
        .meta("tokenizer.ggml.merges", Meta::Strs(merges.clone()))
        .meta("tokenizer.ggml.eos_token_id", Meta::U32(0));
    let tokenizer = tokenizer_file(dir.path(), &writer);
    let text = "a the 12<|im_end|>";
    let ids = tokenizer.encode(text).unwrap();
    let expected = vec![
        id("a"),
        id(&format!("{space}the")),
        id(&space.to_string()),
        id("1"),
        id("2"),
        0,
    ];
    assert_eq!(
        ids, expected,
        "no BOS (add_bos_token defaults to false for gpt2)"
    );
    assert_eq!(tokenizer.decode(&ids).unwrap(), "a the 12");
    assert_eq!(tokenizer.decode(&ids[..5]).unwrap(), "a the 12");

    // The default (GPT-2) split merges digits, and add_bos_token prepends BOS.
    writer.metadata.retain(|(k, _)| k != "tokenizer.ggml.pre");
    writer
        .meta("tokenizer.ggml.bos_token_id", Meta::U32(0))
        .meta("tokenizer.ggml.add_bos_token", Meta::Bool(true));
    let tokenizer = tokenizer_file(dir.path(), &writer);
    assert_eq!(tokenizer.encode("12").unwrap(), vec![0, id("12")]);
}

#[test]
fn sentencepiece_tokenizer_from_scores_prefers_high_scoring_pieces_and_falls_back_to_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0f32; 3];
    for byte in 0..=255u8 {
        tokens.push(format!("<0x{byte:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    // Pieces with SentencePiece scores (higher merges first): "▁hello" is reachable through
    // "▁h" + "ello" ("▁he" + "llo" scores lower), "▁" alone encodes spaces.
    for (piece, score) in [
        ("▁", -1.0),
        ("h", -2.0),
        ("e", -2.0),
        ("l", -2.0),
        ("o", -2.0),
        ("▁h", -3.0),
        ("ll", -3.5),
        ("llo", -4.0),
        ("ello", -4.5),
        ("▁he", -6.0),
        ("▁hello", -5.0),
    ] {
        tokens.push(piece.into());
        types.push(1);
        scores.push(score);
    }
    let id = |t: &str| tokens.iter().position(|x| x == t).unwrap() as u32;
    let mut writer = GgufWriter::default();
    writer
        .meta("tokenizer.ggml.model", Meta::Str("llama".into()))
        .meta("tokenizer.ggml.tokens", Meta::Strs(tokens.clone()))
        .meta("tokenizer.ggml.token_type", Meta::I32s(types))
        .meta("tokenizer.ggml.scores", Meta::F32s(scores))
        .meta("tokenizer.ggml.bos_token_id", Meta::U32(1))
        .meta("tokenizer.ggml.eos_token_id", Meta::U32(2))
        .meta("tokenizer.ggml.unknown_token_id", Meta::U32(0));
    let tokenizer = tokenizer_file(dir.path(), &writer);
    let ids = tokenizer.encode("hello hi").unwrap();
    // BOS by default; "hi": "▁h" then the byte 'i' (0x69), which has no piece.
    assert_eq!(
        ids,
        vec![1, id("▁hello"), id("▁h"), id("<0x69>")],
        "{:?}",
        ids.iter().map(|&i| &tokens[i as usize]).collect::<Vec<_>>()
    );
    assert_eq!(tokenizer.decode(&ids).unwrap(), "hello hi");
}

/// A small valid model file to damage.
fn valid_file() -> Vec<u8> {
    let spec = Spec {
        intermediate: 64,
        ..Spec::llama()
    };
    gguf_model(&spec, GgmlType::Q8_0, 1).0.to_bytes()
}

fn open_error(dir: &Path, bytes: &[u8]) -> HfError {
    let path = write(dir, "damaged.gguf", bytes);
    match load_pretrained::<Flex>(&path, &LoadOptions::default(), &Default::default()) {
        Ok(_) => panic!("a damaged file loaded"),
        Err(error) => error,
    }
}

#[test]
fn truncated_files_are_errors_at_every_length() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = valid_file();
    let header_end = {
        let path = write(dir.path(), "valid.gguf", &bytes);
        let file = GgufFile::open(&path).unwrap();
        file.tensors().values().map(|t| t.start).min().unwrap()
    };
    // Every length through the header, then every 97th byte of the data.
    let lengths = (0..header_end).chain((header_end..bytes.len()).step_by(97));
    for len in lengths {
        let error = open_error(dir.path(), &bytes[..len]);
        assert!(
            matches!(error, HfError::Gguf { .. }),
            "length {len}: {error}"
        );
    }
}

#[test]
fn corrupted_headers_are_errors_or_load_but_never_panic() {
    use rand::{RngExt, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let bytes = valid_file();
    let path = write(dir.path(), "valid.gguf", &bytes);
    let header_end = GgufFile::open(&path)
        .unwrap()
        .tensors()
        .values()
        .map(|t| t.start)
        .min()
        .unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    for _ in 0..300 {
        let mut damaged = bytes.clone();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..header_end);
            damaged[at] ^= 1 << rng.random_range(0..8);
        }
        let path = write(dir.path(), "flipped.gguf", &damaged);
        // Any outcome but a panic (the test would fail) or an abort on a huge allocation. The
        // context is bounded by the caller: a flipped context_length may ask for up to
        // MAX_POSITIONS positions of rotary tables, which is legal but slow to fill.
        let options = LoadOptions {
            max_seq_len: Some(64),
            ..LoadOptions::default()
        };
        let _ = load_pretrained::<Flex>(&path, &options, &Default::default());
    }
}

/// The byte offset of the first occurrence of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
}

#[test]
fn absurd_counts_dims_offsets_and_types_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = valid_file();
    let message = |bytes: &[u8]| open_error(dir.path(), bytes).to_string();

    let mut huge_count = bytes.clone();
    huge_count[8..16].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(
        message(&huge_count).contains("tensor count"),
        "{}",
        message(&huge_count)
    );

    let mut huge_metadata = bytes.clone();
    huge_metadata[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(message(&huge_metadata).contains("metadata count"));

    // The first tensor entry: name, rank, dims... Make its first dim astronomically large.
    let name = b"output_norm.weight";
    let entry = find(&bytes, name) + name.len();
    let mut huge_dim = bytes.clone();
    huge_dim[entry + 4..entry + 12].copy_from_slice(&(1u64 << 62).to_le_bytes());
    assert!(
        message(&huge_dim).contains("output_norm.weight"),
        "{}",
        message(&huge_dim)
    );

    let offset_at = entry + 4 + 8 + 4;
    let mut past_end = bytes.clone();
    past_end[offset_at..offset_at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(
        message(&past_end).contains("past the end"),
        "{}",
        message(&past_end)
    );

    let mut misaligned = bytes.clone();
    misaligned[offset_at..offset_at + 8].copy_from_slice(&3u64.to_le_bytes());
    assert!(message(&misaligned).contains("alignment"));

    let mut iq = bytes.clone();
    iq[entry + 12..entry + 16].copy_from_slice(&16u32.to_le_bytes());
    let error = message(&iq);
    assert!(
        error.contains("IQ2_XXS") && error.contains("output_norm.weight"),
        "{error}"
    );

    let mut unknown_type = bytes.clone();
    unknown_type[entry + 12..entry + 16].copy_from_slice(&9999u32.to_le_bytes());
    assert!(message(&unknown_type).contains("type 9999"));

    // Every entry claims its own bytes: pointing a small tensor into the first one (the
    // embedding, at offset 0) would let entries claim more values than the file holds.
    let mut overlapping = bytes.clone();
    overlapping[offset_at..offset_at + 8].copy_from_slice(&0u64.to_le_bytes());
    let error = message(&overlapping);
    assert!(
        error.contains("overlap") && error.contains("output_norm.weight"),
        "{error}"
    );

    // Named .gguf, the file reaches the parser (not "no config.json in damaged.gguf/").
    let mut magic = bytes.clone();
    magic[0] = b'X';
    assert!(
        message(&magic).contains("not a GGUF file"),
        "{}",
        message(&magic)
    );

    let mut version = bytes.clone();
    version[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert!(message(&version).contains("big-endian"));
    version[4..8].copy_from_slice(&0u32.to_le_bytes());
    assert!(message(&version).contains("unknown GGUF version 0"));

    let key = b"general.architecture";
    let value = find(&bytes, key) + key.len() + 4 + 8;
    let mut gemma = bytes.clone();
    gemma[value..value + 5].copy_from_slice(b"gemma");
    assert!(message(&gemma).contains("gemma"));
}

#[test]
fn two_gguf_names_for_one_tensor_are_an_error_not_a_silent_choice() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec {
        intermediate: 64,
        ..Spec::llama()
    };
    let (mut writer, _) = gguf_model(&spec, GgmlType::F32, 1);
    let query = writer
        .tensors
        .iter()
        .find(|(name, ..)| name == "blk.0.attn_q.weight")
        .cloned()
        .unwrap();
    writer
        .tensors
        .push(("blk.00.attn_q.weight".into(), query.1, query.2, query.3));
    let error = open_error(dir.path(), &writer.to_bytes()).to_string();
    assert!(
        error.contains("blk.0.attn_q.weight")
            && error.contains("blk.00.attn_q.weight")
            && error.contains("model.layers.0.self_attn.q_proj.weight"),
        "{error}"
    );
}

#[test]
fn a_string_or_array_longer_than_the_file_is_an_error_before_any_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = GgufWriter::default();
    add_byte_level_tokenizer(&mut writer, 8);
    let bytes = writer.to_bytes();
    let key = b"tokenizer.ggml.tokens";
    let count_at = find(&bytes, key) + key.len() + 4 + 4;
    let mut huge_array = bytes.clone();
    huge_array[count_at..count_at + 8].copy_from_slice(&(u64::MAX / 4).to_le_bytes());
    let path = write(dir.path(), "array.gguf", &huge_array);
    let error = GgufFile::open(&path).unwrap_err().to_string();
    assert!(error.contains("tokenizer.ggml.tokens"), "{error}");
    let mut huge_key = bytes.clone();
    huge_key[24..32].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
    let path = write(dir.path(), "key.gguf", &huge_key);
    assert!(GgufFile::open(&path).is_err());
}

/// `KV_ROUTING_SMOLLM2_GGUF=/path/SmolLM2-135M-Instruct.Q4_1.gguf`: greedy text and logits of
/// the real model match what `transformers` computed from the same file
/// (`tests/fixtures/smollm2_transformers.json`, written by
/// `benches/real-model/transformers_reference.py`).
#[test]
fn real_smollm2_gguf_matches_transformers() {
    let Ok(path) = std::env::var("KV_ROUTING_SMOLLM2_GGUF") else {
        eprintln!("KV_ROUTING_SMOLLM2_GGUF is not set: skipping the real-model check");
        return;
    };
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("smollm2_transformers.json")).unwrap(),
    )
    .unwrap();
    let device = Default::default();
    // Dequantized to f32 at load, and the file's Q4_1/Q8_0 blocks multiplied in place: the same
    // checks for both.
    for weights in [WeightStorage::Float, WeightStorage::AsStored] {
        let options = LoadOptions {
            weights,
            ..LoadOptions::default()
        };
        let loaded = load_pretrained::<Flex>(Path::new(&path), &options, &device).unwrap();
        check_against_transformers(&loaded, &reference);
    }
}

/// Prompts of more than a decode step's 8 rows, so that their products take the prompt path.
const LONG_PROMPTS: [&str; 2] = [
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg \
     combined movable metal type, oil-based inks and a wooden press adapted from those used to \
     make wine. Within fifty years printing shops had spread to more than two hundred cities, \
     and the price of a book fell so far that",
    "<|im_start|>user\nWrite a Python function that returns the n-th prime number, with a short \
     explanation of how it works.<|im_end|>\n<|im_start|>assistant\n",
];

/// `KV_ROUTING_SMOLLM2_GGUF` (the Q4_1 file) and `KV_ROUTING_SMOLLM2_Q8_0_GGUF` (the same model
/// requantized to Q8_0 by llama.cpp's quantizer), on the fixture's prompts and two longer ones:
/// - Q8_0 weights multiplied as stored give the dequantized-f32 path's greedy text and logits
///   (within the tolerance of the transformers check above: sums in another order);
/// - with llama.cpp's arithmetic for prompts (`with_int8_prompt_products`: on CPUs with
///   AVX-512 VNNI or AVX2 a prompt's rows are rounded to 8 bits per block of 32, Q8_0's own precision,
///   and multiplied as integers) the logits move, and by at most twice what the same precision
///   does to the weights: the Q8_0 file's logits against the Q4_1 file's it was made from, both
///   dequantized (measured: 1.5x at most over these prompts; docs/benchmarks.md); the same
///   bound for the Q4_1 file's blocks as stored with integer prompt products, against the Q4_1
///   file dequantized.
#[test]
fn real_smollm2_q8_0_as_stored_keeps_the_float_paths_text() {
    let (Ok(q4_1), Ok(q8_0)) = (
        std::env::var("KV_ROUTING_SMOLLM2_GGUF"),
        std::env::var("KV_ROUTING_SMOLLM2_Q8_0_GGUF"),
    ) else {
        eprintln!(
            "KV_ROUTING_SMOLLM2_GGUF and KV_ROUTING_SMOLLM2_Q8_0_GGUF are not both set: skipping"
        );
        return;
    };
    let device = Default::default();
    let load = |path: &str, weights| {
        let options = LoadOptions {
            weights,
            ..LoadOptions::default()
        };
        load_pretrained::<Flex>(Path::new(path), &options, &device)
            .unwrap()
            .model
    };
    let from_q4_1 = load(&q4_1, WeightStorage::Float);
    let float = load(&q8_0, WeightStorage::Float);
    let as_stored = load(&q8_0, WeightStorage::AsStored);
    let int8_prompts = as_stored.clone().with_int8_prompt_products(true);
    let q4_1_int8_prompts = load(&q4_1, WeightStorage::AsStored).with_int8_prompt_products(true);
    let tokenizer = HfTokenizer::from_gguf(&GgufFile::open(Path::new(&q8_0)).unwrap()).unwrap();
    let full = CachePlan::full(float.n_layers()).unwrap().route();
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("smollm2_transformers.json")).unwrap(),
    )
    .unwrap();
    let fixture_prompts = reference["cases"].as_array().unwrap().iter();
    let prompts = fixture_prompts.map(|case| case["prompt"].as_str().unwrap().to_string());
    let config = GenerationConfig {
        max_new_tokens: 24,
        ..GenerationConfig::default()
    };
    for prompt in prompts.chain(LONG_PROMPTS.map(String::from)) {
        let ids = tokenizer.encode(&prompt).unwrap();
        let logits = [
            &from_q4_1,
            &float,
            &as_stored,
            &int8_prompts,
            &q4_1_int8_prompts,
        ]
        .map(|m| host_logits(m, &ids, &full));
        // The largest `|a - b| / (1 + |b|)` and `|a - b|` over every position and token.
        let differences = |a: &[Vec<f64>], b: &[Vec<f64>]| {
            let pairs = a.iter().flatten().zip(b.iter().flatten());
            pairs.fold([0.0f64; 2], |[relative, absolute], (x, y)| {
                let d = (x - y).abs();
                [relative.max(d / (1.0 + y.abs())), absolute.max(d)]
            })
        };
        let [as_stored_relative, _] = differences(&logits[2], &logits[1]);
        let [_, weight_rounding] = differences(&logits[0], &logits[1]);
        let [_, int8_difference] = differences(&logits[3], &logits[1]);
        let [_, q4_1_int8_difference] = differences(&logits[4], &logits[0]);
        eprintln!(
            "{} tokens: as stored {as_stored_relative:.1e} (relative); int8 prompts {int8_difference:.3} (Q4_1: {q4_1_int8_difference:.3}), the weights' 8-bit rounding {weight_rounding:.3}",
            ids.len()
        );
        assert!(
            as_stored_relative < 2e-3,
            "{prompt:?}: Q8_0 logits as stored off the dequantized path's by {as_stored_relative} (relative)"
        );
        assert!(
            int8_difference <= 2.0 * weight_rounding,
            "{prompt:?}: int8 prompt products move the logits by {int8_difference}, more than twice the weights' own 8-bit rounding ({weight_rounding})"
        );
        assert!(
            q4_1_int8_difference <= 2.0 * weight_rounding,
            "{prompt:?}: int8 prompt products with Q4_1 blocks move the logits by {q4_1_int8_difference}, more than twice the weights' own 8-bit rounding ({weight_rounding})"
        );
        let [expected, got] = [&float, &as_stored].map(|m| {
            m.generate(std::slice::from_ref(&ids), &full, &config)
                .unwrap()
                .tokens
        });
        assert_eq!(got, expected, "greedy continuation of {prompt:?}");
    }
}

fn check_against_transformers(loaded: &kv_routing_hf::PretrainedModel<Flex>, reference: &Value) {
    let tokenizer = loaded.tokenizer.as_ref().unwrap();
    for case in reference["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let ids = tokenizer.encode(prompt).unwrap();
        let expected_ids: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).unwrap();
        assert_eq!(ids, expected_ids, "tokens of {prompt:?}");
        let full = CachePlan::full(loaded.model_config.n_layers)
            .unwrap()
            .route();
        let last = loaded
            .model
            .forward_tokens(std::slice::from_ref(&ids), &full)
            .unwrap()
            .slice([0..1, ids.len() - 1..ids.len()])
            .into_data()
            .iter::<f32>()
            .collect::<Vec<f32>>();
        for pair in case["last_logits_top"].as_array().unwrap() {
            let (token, value) = (
                pair[0].as_u64().unwrap() as usize,
                pair[1].as_f64().unwrap(),
            );
            assert!(
                (last[token] as f64 - value).abs() < 2e-3 * (1.0 + value.abs()),
                "{prompt:?}: logit of token {token}: {} vs transformers {value}",
                last[token]
            );
        }
        let new: Vec<u32> = serde_json::from_value(case["greedy_ids"].clone()).unwrap();
        let generation = loaded
            .model
            .generate(
                &[ids],
                &full,
                &GenerationConfig {
                    max_new_tokens: new.len(),
                    ..GenerationConfig::default()
                },
            )
            .unwrap();
        assert_eq!(
            generation.tokens[0], new,
            "greedy continuation of {prompt:?}"
        );
        assert_eq!(
            tokenizer.decode(&generation.tokens[0]).unwrap(),
            case["greedy_text"].as_str().unwrap()
        );
    }
}
