//! The loader fuzz targets, written once and used twice:
//! - by the libFuzzer binaries in `fuzz/fuzz_targets/` (coverage-guided, long runs by hand:
//!   see `fuzz/README.md`);
//! - by `crates/kv-routing-train/tests/train/fuzz_corpus.rs`, which runs the valid seed of every
//!   target and every input saved under `fuzz/regressions/<target>/` in CI.
//!
//! A target takes arbitrary bytes, puts them where a loader reads them, and loads; it returns
//! whether they loaded (else they were refused with a typed error). A panic, an abort or a hang
//! is a finding.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn_autodiff::Autodiff;
use burn_flex::{Flex, FlexDevice};
use kv_routing::{Route, RoutedTransformerConfig};
use kv_routing_hf::{
    load_pretrained, save_pretrained, ExportOptions, HfTokenizer, LoadOptions, PretrainedModel,
    WeightStorage,
};
use kv_routing_train::train_config::TrainConfig;
use kv_routing_train::trainer::{checkpoint_dir, train, RunOptions, Start};

/// A target: bytes in, whether they loaded out.
pub type Target = fn(&[u8]) -> bool;

/// The targets, by name (the libFuzzer binaries and the regression directories use the names).
pub const TARGETS: [(&str, Target); 4] = [
    ("gguf", gguf),
    ("safetensors", safetensors),
    ("tokenizer_json", tokenizer_json),
    ("checkpoint_records", checkpoint_records),
];

/// A scratch directory of this process (several fuzzing jobs may run at once).
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("kv-routing-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// Bounds the rotary tables, as a caller loading untrusted files does.
fn options() -> LoadOptions {
    LoadOptions {
        max_seq_len: Some(64),
        ..LoadOptions::default()
    }
}

/// A model that loads must run, and its tokenizer must encode and decode.
fn exercise(loaded: PretrainedModel<Flex>) {
    let vocab = loaded.model_config.vocab_size.max(1) as u32;
    if let Ok(route) = Route::identity(loaded.model_config.n_layers) {
        let tokens: Vec<u32> = (0..3).map(|t| t % vocab).collect();
        let _ = loaded.model.forward_tokens(&[tokens], &route);
    }
    if let Some(tokenizer) = loaded.tokenizer {
        exercise_tokenizer(&tokenizer);
    }
}

fn exercise_tokenizer(tokenizer: &HfTokenizer) {
    if let Ok(ids) = tokenizer.encode("the cat sat 1234 ünïcödé") {
        let _ = tokenizer.decode(&ids);
    }
    let _ = tokenizer.decode(&[0, 1, 2, u32::MAX]);
}

/// The bytes as a GGUF file: model and tokenizer, the model loaded twice: dequantized, and with
/// its Q8_0/Q4_1 blocks as stored (multiplied in place on flex).
pub fn gguf(data: &[u8]) -> bool {
    let path = scratch().join("model.gguf");
    std::fs::write(&path, data).unwrap();
    if let Ok(tokenizer) = HfTokenizer::from_file(&path) {
        exercise_tokenizer(&tokenizer);
    }
    let as_stored = LoadOptions {
        weights: WeightStorage::AsStored,
        ..options()
    };
    if let Ok(loaded) = load_pretrained::<Flex>(&path, &as_stored, &FlexDevice) {
        exercise(loaded);
    }
    load_pretrained::<Flex>(&path, &options(), &FlexDevice)
        .map(exercise)
        .is_ok()
}

/// A small model, its configuration and its weights written in Hugging Face layout into
/// `dir` (deterministic: the seed of the `safetensors` target is its `model.safetensors`).
fn write_hf_model(dir: &Path) {
    let config = RoutedTransformerConfig::new(48, 32, 2, 4, 64)
        .with_n_kv_heads(Some(2))
        .with_max_seq_len(64);
    let model = config.init_seeded::<Flex>(7, &FlexDevice).unwrap();
    save_pretrained(&model, &config, None, dir, &ExportOptions::default()).unwrap();
}

fn hf_model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch().join("hf");
        write_hf_model(&dir);
        dir
    })
}

/// The bytes as the `model.safetensors` of a Hugging Face directory whose `config.json` is
/// [`write_hf_model`]'s.
pub fn safetensors(data: &[u8]) -> bool {
    let dir = hf_model_dir();
    std::fs::write(dir.join("model.safetensors"), data).unwrap();
    load_pretrained::<Flex>(dir, &options(), &FlexDevice)
        .map(exercise)
        .is_ok()
}

/// The bytes as a `tokenizer.json`.
pub fn tokenizer_json(data: &[u8]) -> bool {
    let path = scratch().join("tokenizer.json");
    std::fs::write(&path, data).unwrap();
    HfTokenizer::from_file(&path)
        .map(|tokenizer| exercise_tokenizer(&tokenizer))
        .is_ok()
}

/// A tiny training run (2 layers of width 16, 2 steps of 2 sequences of 16 bytes), shared with
/// `crates/kv-routing-train/tests/fuzz_checkpoints.rs`.
pub fn tiny_run() -> TrainConfig {
    let mut config = TrainConfig::small(2, 16, 16);
    config.model = RoutedTransformerConfig::new(256, 16, 2, 2, 32)
        .with_n_kv_heads(Some(1))
        .with_max_seq_len(32);
    config.p = 0.5;
    config.steps = 2;
    config.batch_size = 2;
    config.eval_every = 0;
    config.eval_batches = 1;
    config.checkpoint_every = 0;
    config
}

/// The run directory of a tiny run checkpointed after its first step, created once; its
/// `config.json` and `state.json` stay, the records are the fuzz input.
fn run_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = scratch().join("run");
        let options = RunOptions {
            show_progress: false,
            stop_at: Some(1),
            ..RunOptions::default()
        };
        train::<Autodiff<Flex>>(tiny_run(), Start::Fresh, &out, options, &FlexDevice).unwrap();
        out
    })
}

/// Joins the two records of a checkpoint into one fuzz input: the length of `model.mpk` (4
/// bytes, little-endian), `model.mpk`, then `optimizer.mpk`.
pub fn join_records(model: &[u8], optimizer: &[u8]) -> Vec<u8> {
    let mut data = (model.len() as u32).to_le_bytes().to_vec();
    data.extend_from_slice(model);
    data.extend_from_slice(optimizer);
    data
}

/// The bytes as the two records of a checkpoint ([`join_records`]), resumed for one step.
pub fn checkpoint_records(data: &[u8]) -> bool {
    let out = run_dir();
    let checkpoint = checkpoint_dir(out);
    let Some((length, rest)) = data.split_first_chunk::<4>() else {
        return false;
    };
    let split = (u32::from_le_bytes(*length) as usize).min(rest.len());
    let (model, optimizer) = rest.split_at(split);
    // A resume that ran rewrote the checkpoint: the run's files are put back first.
    let (config, state) = pristine_run_files();
    std::fs::create_dir_all(&checkpoint).unwrap();
    std::fs::write(checkpoint.join("config.json"), config).unwrap();
    std::fs::write(checkpoint.join("state.json"), state).unwrap();
    std::fs::write(checkpoint.join("model.mpk"), model).unwrap();
    std::fs::write(checkpoint.join("optimizer.mpk"), optimizer).unwrap();
    let options = RunOptions {
        show_progress: false,
        stop_at: Some(2),
        memory_budget: kv_routing::MemoryBudget::bytes(1 << 30),
        ..Default::default()
    };
    train::<Autodiff<Flex>>(
        tiny_run(),
        Start::Resume { extend_to: None },
        out,
        options,
        &FlexDevice,
    )
    .is_ok()
}

/// `config.json` and `state.json` of the run as first saved.
fn pristine_run_files() -> &'static (Vec<u8>, Vec<u8>) {
    static FILES: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    FILES.get_or_init(|| {
        let checkpoint = checkpoint_dir(run_dir());
        (
            std::fs::read(checkpoint.join("config.json")).unwrap(),
            std::fs::read(checkpoint.join("state.json")).unwrap(),
        )
    })
}

/// A valid input of the targets but `gguf` (whose seed the corpus test writes with
/// kv-routing-hf's GGUF test writer): the safetensors of [`write_hf_model`], the records of the
/// tiny run, a small byte-level BPE `tokenizer.json`.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let hf = hf_model_dir();
    let checkpoint = checkpoint_dir(run_dir());
    let _ = pristine_run_files();
    let read = |path: PathBuf| std::fs::read(path).unwrap();
    vec![
        ("safetensors", read(hf.join("model.safetensors"))),
        (
            "checkpoint_records",
            join_records(
                &read(checkpoint.join("model.mpk")),
                &read(checkpoint.join("optimizer.mpk")),
            ),
        ),
        ("tokenizer_json", TOKENIZER_SEED.as_bytes().to_vec()),
    ]
}

/// A small byte-level BPE `tokenizer.json` (the kind Llama 3, Qwen and SmolLM ship).
const TOKENIZER_SEED: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[{"id":0,"content":"<|end|>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],"normalizer":null,"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},"post_processor":null,"decoder":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true},"model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,"end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,"ignore_merges":false,"vocab":{"<|end|>":0,"t":1,"h":2,"e":3,"Ġ":4,"c":5,"a":6,"th":7,"the":8,"Ġt":9},"merges":[["t","h"],["th","e"],["Ġ","t"]]}}"#;
