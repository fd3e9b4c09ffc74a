//! Times decode steps, a prefill, or chunks of a real checkpoint (no criterion), for profiling:
//! `real_probe MODEL decode|prefill|chunk BATCH CONTEXT_OR_LENGTH full|every2|every4 [f32|f16|bf16] [REPEATS] [KV_DTYPE] [WEIGHTS]`
//! (`KV_DTYPE`: what the cache stores, `native` (the default), `f16`, `int8`, ...)
//! (`WEIGHTS`: what the matrices are held as, `float` (the default), `as-stored`, `q8_0`, `q4_1`)
//! (`chunk`: steps of `CHUNK` tokens after a history of CONTEXT tokens, as when the next turn of
//! a conversation is appended to a cache).
//! (`perf record -g target/release/examples/real_probe ...` profiles exactly one workload).
use std::time::Instant;

use kv_routing_backend::{device_with_precision, Backend, Precision};
use kv_routing_benches::*;

/// Tokens per step of the `chunk` workload.
const CHUNK: usize = 32;

fn main() {
    // Freed activations kept for reuse (an opt-in of programs; docs/backends.md).
    kv_routing_backend::retain_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        eprintln!("usage: real_probe MODEL decode|prefill|chunk BATCH CONTEXT full|every2|every4 [f32|f16|bf16] [REPEATS] [KV_DTYPE] [WEIGHTS] [float|int8 prompt products]");
        std::process::exit(2);
    }
    let precision: Precision = args.get(5).map_or("f32", String::as_str).parse().unwrap();
    let repeats: usize = args.get(6).map_or(24, |r| r.parse().unwrap());
    let device = device_with_precision(precision).unwrap();
    let weights = args.get(8).map_or("float", String::as_str).parse().unwrap();
    let loaded = kv_routing_train::pretrained::load_model_dir_with::<Backend>(
        args[0].as_ref(),
        weights,
        &device,
    )
    .unwrap();
    let kv_dtype: kv_routing::KvDtype = args
        .get(7)
        .map_or("native", String::as_str)
        .parse()
        .unwrap();
    let int8_prompts = match args.get(9).map(String::as_str) {
        None | Some("float") => false,
        Some("int8") => true,
        Some(other) => panic!("prompt products: float or int8, got {other}"),
    };
    let model = &loaded
        .model
        .clone()
        .with_kv_dtype(kv_dtype)
        .unwrap()
        .with_int8_prompt_products(int8_prompts);
    let (batch, length): (usize, usize) = (args[2].parse().unwrap(), args[3].parse().unwrap());
    let plan = plans(model.n_layers())
        .into_iter()
        .find(|(name, _)| *name == args[4])
        .expect("plan: full, every2, every3 or every4")
        .1;
    // Served as `generate` serves it: sharing adapters merged for a plan that shares.
    let merged;
    let model = if model.sharing_adapter_rank().is_some() && plan.route().shares() {
        merged = model.clone().with_sharing_adapters_merged().unwrap();
        &merged
    } else {
        model
    };
    let mut times = Vec::new();
    match args[1].as_str() {
        "decode" => {
            let mut cache = model
                .new_cache(batch, length + repeats + 1, plan.route())
                .unwrap();
            fill_cache(&mut cache, length, &device).unwrap();
            decode(model, &mut cache, 1).unwrap();
            for _ in 0..repeats {
                let start = Instant::now();
                decode(model, &mut cache, 1).unwrap();
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        "chunk" => {
            let mut cache = model
                .new_cache(batch, length + (repeats + 1) * CHUNK, plan.route())
                .unwrap();
            fill_cache(&mut cache, length, &device).unwrap();
            let chunk = synthetic_tokens(batch, CHUNK, model.vocab_size());
            sync(model.forward_cached_last(&chunk, &mut cache).unwrap());
            for _ in 0..repeats {
                let start = Instant::now();
                sync(model.forward_cached_last(&chunk, &mut cache).unwrap());
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        "prefill" => {
            let prompts = synthetic_tokens(batch, length, model.vocab_size());
            for _ in 0..repeats {
                let mut cache = model.new_cache(batch, length, plan.route()).unwrap();
                let start = Instant::now();
                sync(model.forward_cached_last(&prompts, &mut cache).unwrap());
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        other => panic!("unknown workload {other}"),
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let per_token = if args[1] == "decode" {
        batch as f64 * 1e3 / median
    } else if args[1] == "chunk" {
        (batch * CHUNK) as f64 * 1e3 / median
    } else {
        (batch * length) as f64 * 1e3 / median
    };
    println!(
        "{} b{batch} {length} {} {}: min {:.1} median {median:.1} max {:.1} ms ({per_token:.1} tokens/s)",
        args[1],
        args[4],
        precision.name(),
        sorted[0],
        sorted[sorted.len() - 1],
    );
}
