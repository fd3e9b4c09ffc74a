//! Fuzzed loaders: valid files written by the tests are damaged at random (`support::fuzz`:
//! truncation, bit flips, absurd integers, removed or repeated runs, JSON values of the wrong
//! type or size, removed and duplicated keys, wrong dtypes, offsets and shapes in safetensors
//! headers) and loaded again. Every case must end in a model or a typed error: never a panic,
//! a hang, or an allocation far beyond the input's size. A model that loads must also run.
//!
//! Bounded for CI (the case counts below take seconds); a long run:
//! `KV_FUZZ_CASES=200000 KV_FUZZ_SEED=$RANDOM cargo test --release -p kv-routing-hf --test fuzz_loaders`.

mod support;

use std::path::{Path, PathBuf};

use kv_routing::Route;
use kv_routing_hf::gguf::GgmlType;
use kv_routing_hf::{load_pretrained, HfTokenizer, LoadOptions, PretrainedModel, WeightStorage};
use support::checkpoint_builder::Spec;
use support::fuzz::{
    apply, byte_mutations, fuzz, json_mutations, mutations_for, read_files, write_damaged, Format,
    Outcome, PeakAllocator,
};
use support::gguf_writer::{add_byte_level_tokenizer, gguf_model, GgufWriter};

#[global_allocator]
static ALLOCATOR: PeakAllocator = PeakAllocator;

type Flex = burn_flex::Flex;

/// Cases per target in the normal test run.
const CASES: u32 = 3000;

/// The rotary tables follow the configuration's context (up to `MAX_POSITIONS`); a caller
/// loading files it does not trust bounds them, as the fuzz cases do.
fn options() -> LoadOptions {
    LoadOptions {
        max_seq_len: Some(64),
        ..LoadOptions::default()
    }
}

/// A loaded model must run: a forward pass over a few tokens is a result, not a panic.
fn exercise(loaded: PretrainedModel<Flex>) {
    let n_layers = loaded.model_config.n_layers;
    let vocab = loaded.model_config.vocab_size as u32;
    let tokens: Vec<u32> = (0..3).map(|t| t % vocab.max(1)).collect();
    if let Ok(route) = Route::identity(n_layers) {
        let _ = loaded.model.forward_tokens(&[tokens], &route);
    }
    if let Some(tokenizer) = loaded.tokenizer {
        exercise_tokenizer(&tokenizer);
    }
}

fn exercise_tokenizer(tokenizer: &HfTokenizer) {
    if let Ok(ids) = tokenizer.encode("the cat sat 1234 <|end|> ünïcödé") {
        let _ = tokenizer.decode(&ids);
    }
    let _ = tokenizer.decode(&[0, 1, 2, u32::MAX]);
}

/// A tokenizer.json written from the byte-level tokenizer of a GGUF file.
fn write_tokenizer_json(dir: &Path) {
    let mut writer = GgufWriter::default();
    add_byte_level_tokenizer(&mut writer, 40);
    let gguf = dir.join("tokenizer.gguf");
    std::fs::write(&gguf, writer.to_bytes()).unwrap();
    HfTokenizer::from_file(&gguf)
        .unwrap()
        .save(&dir.join("tokenizer.json"))
        .unwrap();
    std::fs::remove_file(gguf).unwrap();
}

/// A valid Hugging Face checkpoint directory: config, weights in `shards` files, tokenizer.
fn valid_checkpoint(dir: &Path, shards: usize) -> Vec<(PathBuf, Vec<u8>)> {
    let spec = Spec::llama();
    spec.write(dir, &spec.random_tensors(1), shards);
    write_tokenizer_json(dir);
    let _ = load_pretrained::<Flex>(dir, &options(), &Default::default())
        .expect("the valid checkpoint loads");
    read_files(dir)
}

/// Fuzzes one file of a checkpoint directory: each case rewrites every file, damages `target`
/// and loads the directory.
fn fuzz_checkpoint_file(name: &str, shards: usize, target: &str, format: Format) {
    let dir = tempfile::tempdir().unwrap();
    let files = valid_checkpoint(dir.path(), shards);
    fuzz(name, CASES, mutations_for(format), |mutations| {
        let input_bytes = write_damaged(&files, target, format, mutations);
        let loaded = load_pretrained::<Flex>(dir.path(), &options(), &Default::default());
        Outcome {
            input_bytes,
            loaded: loaded.map(exercise).is_ok(),
        }
    });
}

#[test]
fn damaged_safetensors_files_are_errors() {
    fuzz_checkpoint_file(
        "model.safetensors",
        1,
        "model.safetensors",
        Format::Safetensors,
    );
}

#[test]
fn damaged_safetensors_shards_are_errors() {
    fuzz_checkpoint_file(
        "shard",
        2,
        "model-00001-of-00002.safetensors",
        Format::Safetensors,
    );
}

#[test]
fn damaged_shard_indexes_are_errors() {
    fuzz_checkpoint_file(
        "model.safetensors.index.json",
        2,
        "model.safetensors.index.json",
        Format::Json,
    );
}

#[test]
fn damaged_configs_are_errors() {
    fuzz_checkpoint_file("config.json", 1, "config.json", Format::Json);
}

#[test]
fn damaged_tokenizer_json_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_tokenizer_json(dir.path());
    let path = dir.path().join("tokenizer.json");
    let valid = std::fs::read(&path).unwrap();
    fuzz("tokenizer.json", CASES, json_mutations(), |mutations| {
        let bytes = apply(&valid, Format::Json, mutations);
        std::fs::write(&path, &bytes).unwrap();
        let loaded = HfTokenizer::from_file(&path);
        Outcome {
            input_bytes: bytes.len(),
            loaded: loaded.map(|t| exercise_tokenizer(&t)).is_ok(),
        }
    });
}

#[test]
fn damaged_gguf_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec {
        intermediate: 64,
        ..Spec::llama()
    };
    let valid = gguf_model(&spec, GgmlType::Q8_0, 1).0.to_bytes();
    let path = dir.path().join("model.gguf");
    fuzz("gguf", CASES, byte_mutations(), |mutations| {
        let bytes = apply(&valid, Format::Binary, mutations);
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(loaded) = load_pretrained::<Flex>(&path, &options(), &Default::default()) {
            exercise(loaded);
        }
        // The same file with its Q8_0 blocks kept as stored and multiplied in place: a damaged
        // scale or size is an error, never a panic in the kernel.
        let as_stored = LoadOptions {
            weights: WeightStorage::AsStored,
            ..options()
        };
        if let Ok(loaded) = load_pretrained::<Flex>(&path, &as_stored, &Default::default()) {
            exercise(loaded);
        }
        let loaded = HfTokenizer::from_file(&path);
        Outcome {
            input_bytes: bytes.len(),
            loaded: loaded.map(|t| exercise_tokenizer(&t)).is_ok(),
        }
    });
}
