//! Ratios to the full plan (and to p = 0) measured in **interleaved rounds**, the figures of
//! docs/benchmarks.md that survive a noisy machine.
//!
//! Criterion times one benchmark after another, so a ratio of two of its medians compares
//! minutes that may differ in how much CPU the hypervisor or a neighbour took away (steal time
//! on the shared 2-core machines reached 44% of busy time in bursts). Here every round runs each
//! variant once, in an order rotated per round, and the ratio is taken inside the round; the
//! table reports the median of the per-round ratios and their range.
//!
//! The `peer` group compares this library with PyTorch eager running the same routed forward
//! on a real checkpoint (`--model`, a Hugging Face directory or a GGUF file), each round timing
//! both: `benches/real-model/torch_peer.py` runs as a subprocess in a Python environment with
//! torch and transformers (`--python`). Before timing, both compute the logits of the same
//! prompts under the full and a shared plan, and the differences are printed.
//!
//! ```text
//! cargo run --release -p kv-routing-benches --bin bench-paired -- --rounds 9 [--groups decode,prefill,train,capacity]
//! KV_BENCH_SIZES=tiny cargo run --release -p kv-routing-benches --bin bench-paired --no-default-features --features wgpu
//! cargo run --release -p kv-routing-benches --bin bench-paired -- --groups peer --model SmolLM2.gguf --python ~/venv/bin/python
//! ```

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Instant;

use kv_routing::{logits_rows, CachePlan, GenerationConfig, RoutedTransformer};
use kv_routing_backend::{
    device, device_with_precision, AutodiffBackend, Backend, Device, Precision, NAME,
};
use kv_routing_benches::peer::{Peer, PEER_SCRIPT};
use kv_routing_benches::*;
use serde_json::json;

/// Seconds of each variant (index) in each round.
struct Rounds {
    names: Vec<String>,
    seconds: Vec<Vec<f64>>,
}

impl Rounds {
    /// Runs a warm-up round, then `rounds` rounds of `variants` (each returns the seconds of its
    /// timed part), starting each round at the next variant so no variant always runs first.
    fn run(names: Vec<String>, rounds: usize, mut time: impl FnMut(usize) -> f64) -> Self {
        let n = names.len();
        // A discarded first round: the first runs pay for allocator and thread-pool warm-up.
        (0..n).for_each(|variant| {
            time(variant);
        });
        let mut seconds = vec![vec![0.0; n]; rounds];
        for (round, row) in seconds.iter_mut().enumerate() {
            for i in 0..n {
                let variant = (round + i) % n;
                row[variant] = time(variant);
            }
        }
        Self { names, seconds }
    }

    /// (name, median seconds, median per-round ratio to variant 0, lowest, highest ratio).
    fn summary(&self) -> Vec<(String, f64, f64, f64, f64)> {
        (0..self.names.len())
            .map(|v| {
                let times: Vec<f64> = self.seconds.iter().map(|r| r[v]).collect();
                let ratios: Vec<f64> = self.seconds.iter().map(|r| r[0] / r[v]).collect();
                let (low, high) = ratios
                    .iter()
                    .fold((f64::INFINITY, 0.0f64), |(l, h), &r| (l.min(r), h.max(r)));
                (
                    self.names[v].clone(),
                    median(times),
                    median(ratios),
                    low,
                    high,
                )
            })
            .collect()
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn timed(f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64()
}

fn plan_names(model: &RoutedTransformer<Backend>) -> (Vec<String>, Vec<CachePlan>) {
    plans(model.n_layers())
        .into_iter()
        .map(|(name, plan)| (name.to_string(), plan))
        .unzip()
}

fn decode_rounds(size: &ModelSize, model: &RoutedTransformer<Backend>, rounds: usize) {
    let device = device();
    let (names, plans) = plan_names(model);
    for batch in DECODE_BATCHES {
        for context in DECODE_CONTEXTS {
            let result = Rounds::run(names.clone(), rounds, |v| {
                time_decode(model, &plans[v], batch, context, &device)
            });
            for (plan, seconds, ratio, low, high) in result.summary() {
                let tokens_per_second = (batch * DECODE_STEPS) as f64 / seconds;
                println!(
                    "| {} | {batch} | {context} | {plan} | {tokens_per_second:.1} | {ratio:.2}x | {low:.2}-{high:.2} |",
                    size.name
                );
            }
        }
    }
}

/// Seconds of `DECODE_STEPS` decode steps of `batch` sequences after `context` tokens (the
/// cache is filled outside the timing).
fn time_decode(
    model: &RoutedTransformer<Backend>,
    plan: &CachePlan,
    batch: usize,
    context: usize,
    device: &Device,
) -> f64 {
    let mut cache = model
        .new_cache(batch, context + DECODE_STEPS, plan.route())
        .unwrap();
    fill_cache(&mut cache, context, device).unwrap();
    timed(|| decode(model, &mut cache, DECODE_STEPS).unwrap())
}

/// Aggregate decode tokens/s of each plan at the largest batch its cache fits in the KV budget.
fn capacity_rounds(size: &ModelSize, model: &RoutedTransformer<Backend>, rounds: usize) {
    let device = device();
    let (names, plans) = plan_names(model);
    let batches: Vec<usize> = plans
        .iter()
        .map(|plan| capacity_batch(&size.config, plan))
        .collect();
    let context = CAPACITY_CONTEXT - DECODE_STEPS;
    let result = Rounds::run(names, rounds, |v| {
        time_decode(model, &plans[v], batches[v], context, &device)
    });
    for ((plan, seconds, ratio, low, high), batch) in result.summary().into_iter().zip(&batches) {
        // Throughput ratio: the per-round time ratio scaled by the batch each plan fits.
        let scale = *batch as f64 / batches[0] as f64;
        println!(
            "| {} | {plan} | {batch} | {:.1} | {:.2}x | {:.2}-{:.2} |",
            size.name,
            (batch * DECODE_STEPS) as f64 / seconds,
            ratio * scale,
            low * scale,
            high * scale
        );
    }
}

fn prefill_rounds(size: &ModelSize, model: &RoutedTransformer<Backend>, rounds: usize) {
    let (names, plans) = plan_names(model);
    for len in PREFILL_LENGTHS {
        let prompt = synthetic_tokens(1, len, size.config.vocab_size);
        let result = Rounds::run(names.clone(), rounds, |v| {
            timed(|| {
                let mut cache = model.new_cache(1, len, plans[v].route()).unwrap();
                sync(model.forward_cached_last(&prompt, &mut cache).unwrap());
            })
        });
        for (plan, seconds, ratio, low, high) in result.summary() {
            // Time ratio (lower is faster): prefill must never be slower than full.
            println!(
                "| {} | {len} | {plan} | {:.1} ms | {:.2}x | {:.2}-{:.2} |",
                size.name,
                seconds * 1e3,
                1.0 / ratio,
                1.0 / high,
                1.0 / low
            );
        }
    }
}

fn train_rounds(size: &ModelSize, rounds: usize) {
    let device = device();
    let (batch, seq_len) = size.train_batch;
    let tokens = synthetic_tokens(batch, seq_len, size.config.vocab_size);
    let names: Vec<String> = TRAIN_PROBABILITIES
        .iter()
        .map(|p| format!("p{p}"))
        .collect();
    let mut loops: Vec<TrainLoop<AutodiffBackend>> = TRAIN_PROBABILITIES
        .iter()
        .map(|&p| TrainLoop::new(&size.config, p, &device).unwrap())
        .collect();
    // Rounds of several steps each: one step's route is random, so single-step ratios mostly
    // measure which layers the draw happened to share.
    const STEPS: usize = 4;
    let result = Rounds::run(names, rounds, |v| {
        timed(|| {
            for _ in 0..STEPS {
                loops[v].step(&tokens, false).unwrap();
            }
        }) / STEPS as f64
    });
    for (variant, seconds, ratio, low, high) in result.summary() {
        println!(
            "| {} | {variant} | {} ms | {:.3}x | {:.3}-{:.3} |",
            size.name,
            (seconds * 1e3).round(),
            1.0 / ratio,
            1.0 / high,
            1.0 / low
        );
    }
}

/// What the `peer` group runs against.
struct PeerSettings {
    model: PathBuf,
    python: String,
    threads: usize,
    dtype: Precision,
}

/// Decode and prefill of a real checkpoint, this library against the PyTorch peer, interleaved.
fn peer_rounds(settings: &PeerSettings, rounds: usize) {
    let device = device();
    let loaded = kv_routing_train::pretrained::load_model_dir::<Backend>(&settings.model, &device)
        .unwrap_or_else(|e| panic!("loading {}: {e}", settings.model.display()));
    let model = &loaded.model;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(PEER_SCRIPT);
    let mut peer = Peer::start(
        &settings.python,
        &script,
        &settings.model,
        settings.threads,
        settings.dtype.name(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "Model: {} ({} layers); peer: {}; this library: {NAME} {}, {} threads.\n",
        settings.model.display(),
        model.n_layers(),
        peer.describe(),
        settings.dtype,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let compared: Vec<(&str, CachePlan)> = plans(model.n_layers())
        .into_iter()
        .filter(|(name, _)| ["full", "every2", "every4"].contains(name))
        .collect();
    println!("### Same function: logits of 2 prompts of 32 tokens, then 8 greedy tokens\n");
    println!("| plan | max abs logit difference | greedy tokens equal |");
    println!("|---|---|---|");
    for (name, plan) in &compared {
        let (difference, same) = agreement(model, plan, &mut peer);
        println!("| {name} | {difference:.2e} | {same} |");
    }
    println!("\n### Decode: tokens/s, this library vs PyTorch eager, ratio per round\n");
    println!("| batch | context | plan | kv-routing tok/s | PyTorch tok/s | speed vs PyTorch (median) | range |");
    println!("|---|---|---|---|---|---|---|");
    for batch in DECODE_BATCHES {
        for context in [1024, 4096] {
            for (name, plan) in &compared {
                let request = json!({"op": "decode", "batch": batch, "context": context,
                    "plan": plan.cached_layers(), "steps": DECODE_STEPS, "warmup": 0});
                let result = Rounds::run(vec!["ours".into(), "peer".into()], rounds, |v| {
                    if v == 0 {
                        time_decode(model, plan, batch, context, &device)
                    } else {
                        peer_seconds(&mut peer, &request)
                    }
                });
                let (ours, theirs, speed, low, high) = versus_peer(&result);
                let tokens = (batch * DECODE_STEPS) as f64;
                println!(
                    "| {batch} | {context} | {name} | {:.1} | {:.1} | {speed:.2}x | {low:.2}-{high:.2} |",
                    tokens / ours,
                    tokens / theirs,
                );
            }
        }
    }
    println!(
        "\n### Time to first token (batch 1), this library vs PyTorch eager, ratio per round\n"
    );
    println!("| prompt | plan | kv-routing | PyTorch | speed vs PyTorch (median) | range |");
    println!("|---|---|---|---|---|---|");
    for len in PREFILL_LENGTHS {
        for (name, plan) in &compared {
            let prompt = synthetic_tokens(1, len, model.vocab_size());
            let request = json!({"op": "prefill", "batch": 1, "length": len,
                "plan": plan.cached_layers(), "repeats": 1});
            let result = Rounds::run(vec!["ours".into(), "peer".into()], rounds, |v| {
                if v == 0 {
                    timed(|| {
                        let mut cache = model.new_cache(1, len, plan.route()).unwrap();
                        sync(model.forward_cached_last(&prompt, &mut cache).unwrap());
                    })
                } else {
                    peer_seconds(&mut peer, &request)
                }
            });
            let (ours, theirs, speed, low, high) = versus_peer(&result);
            println!(
                "| {len} | {name} | {:.0} ms | {:.0} ms | {speed:.2}x | {low:.2}-{high:.2} |",
                ours * 1e3,
                theirs * 1e3,
            );
        }
    }
    println!();
}

/// (our median seconds, the peer's, and our speed relative to the peer: the median of the
/// per-round time ratios peer / ours, with their lowest and highest).
fn versus_peer(rounds: &Rounds) -> (f64, f64, f64, f64, f64) {
    let summary = rounds.summary();
    // `summary` ratios are variant 0's time over the variant's: ours / peer, so invert.
    let (_, peer_seconds, ratio, low, high) = summary[1].clone();
    (
        summary[0].1,
        peer_seconds,
        1.0 / ratio,
        1.0 / high,
        1.0 / low,
    )
}

/// Seconds the peer reports for `request` (its own clock, around the timed part only).
fn peer_seconds(peer: &mut Peer, request: &serde_json::Value) -> f64 {
    let reply = peer.request(request).unwrap_or_else(|e| panic!("{e}"));
    match &reply["seconds"] {
        serde_json::Value::Array(times) => times.iter().filter_map(|t| t.as_f64()).sum(),
        seconds => seconds.as_f64().expect("seconds in the reply"),
    }
}

/// Largest logit difference between this library and the peer on the same prompts under
/// `plan` (cached prefill), and whether their greedy continuations agree.
fn agreement(model: &RoutedTransformer<Backend>, plan: &CachePlan, peer: &mut Peer) -> (f64, bool) {
    const NEW: usize = 8;
    let prompts = synthetic_tokens(2, 32, model.vocab_size());
    let reply = peer
        .request(
            &json!({"op": "logits", "tokens": prompts, "plan": plan.cached_layers(),
            "decode": NEW}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let mut cache = model.new_cache(2, 32, plan.route()).unwrap();
    let rows = logits_rows(model.forward_cached_last(&prompts, &mut cache).unwrap()).unwrap();
    let mut difference = 0.0f64;
    for (row, theirs) in rows.iter().zip(reply["prefill_last"].as_array().unwrap()) {
        for (a, b) in row.iter().zip(theirs.as_array().unwrap()) {
            difference = difference.max((*a as f64 - b.as_f64().unwrap()).abs());
        }
    }
    let greedy = model
        .generate(
            &prompts,
            &plan.route(),
            &GenerationConfig {
                max_new_tokens: NEW,
                ..Default::default()
            },
        )
        .unwrap()
        .tokens;
    let theirs: Vec<Vec<u32>> = serde_json::from_value(reply["greedy"].clone()).unwrap();
    (difference, greedy == theirs)
}

/// (busy, steal) jiffies of all CPUs so far, from /proc/stat.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    Some((fields[0] + fields[1] + fields[2], *fields.get(7)?))
}

fn main() {
    // Freed activations kept for reuse (an opt-in of programs; docs/backends.md).
    kv_routing_backend::retain_freed_memory();
    let mut rounds = 9;
    let mut groups = "decode,prefill,train".to_string();
    let mut peer = PeerSettings {
        model: PathBuf::new(),
        python: "python3".into(),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        dtype: Precision::F32,
    };
    const GROUPS: [&str; 5] = ["decode", "prefill", "train", "capacity", "peer"];
    let usage = || -> ! {
        eprintln!(
            "usage: bench-paired [--rounds N>0] [--groups decode,prefill,train,capacity,peer]\n\
             \x20      [--model CHECKPOINT_DIR_OR_GGUF --python PYTHON --threads N --dtype f32|f16|bf16] (the peer group)"
        );
        std::process::exit(2);
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--rounds", Some(n)) if n.parse::<usize>().is_ok_and(|n| n > 0) => {
                rounds = n.parse().unwrap()
            }
            // A misspelt group would otherwise run nothing and print empty tables.
            ("--groups", Some(g)) if g.split(',').all(|w| GROUPS.contains(&w.trim())) => groups = g,
            ("--model", Some(path)) => peer.model = path.into(),
            ("--python", Some(python)) => peer.python = python,
            ("--threads", Some(n)) if n.parse::<usize>().is_ok_and(|n| n > 0) => {
                peer.threads = n.parse().unwrap()
            }
            ("--dtype", Some(dtype)) if dtype.parse::<Precision>().is_ok() => {
                peer.dtype = dtype.parse().unwrap()
            }
            _ => usage(),
        }
    }
    let wants = |g: &str| groups.split(',').any(|w| w.trim() == g);
    // Every tensor of this process (both implementations' models and caches) in that type.
    device_with_precision(peer.dtype).unwrap_or_else(|e| panic!("{e}"));
    if wants("peer") && peer.model.as_os_str().is_empty() {
        eprintln!(
            "the peer group needs --model (a Hugging Face checkpoint directory or a GGUF file)"
        );
        usage();
    }
    let device = device();
    let start = cpu_jiffies();
    println!("## Interleaved ratios ({NAME}, {rounds} rounds)\n");
    if wants("decode") {
        println!("### Decode: tokens/s and speed vs full, ratio per round\n");
        println!("| model | batch | context | plan | tokens/s (median) | vs full (median) | range over rounds |");
        println!("|---|---|---|---|---|---|---|");
        for size in sizes() {
            let model = size.config.init::<Backend>(&device).unwrap();
            decode_rounds(&size, &model, rounds);
        }
        println!();
    }
    if wants("prefill") {
        println!("### Time to first token: time vs full (lower is faster), ratio per round\n");
        println!("| model | prompt | plan | median | time vs full (median) | range over rounds |");
        println!("|---|---|---|---|---|---|");
        for size in sizes() {
            let model = size.config.init::<Backend>(&device).unwrap();
            prefill_rounds(&size, &model, rounds);
        }
        println!();
    }
    if wants("train") {
        println!("### Training step: time vs p = 0 (lower is faster), 4 steps per round\n");
        println!("| model | p | median step | time vs p = 0 (median) | range over rounds |");
        println!("|---|---|---|---|---|");
        for size in sizes() {
            train_rounds(&size, rounds);
        }
        println!();
    }
    if wants("capacity") {
        println!(
            "### Capacity: aggregate decode at the largest batch a {} KV budget holds (context {CAPACITY_CONTEXT}), throughput vs full per round\n",
            budget_label(kv_budget())
        );
        println!(
            "| model | plan | batch | tokens/s (median) | vs full (median) | range over rounds |"
        );
        println!("|---|---|---|---|---|---|");
        for size in sizes() {
            let model = size.config.init::<Backend>(&device).unwrap();
            capacity_rounds(&size, &model, rounds);
        }
        println!();
    }
    if wants("peer") {
        println!("## This library vs PyTorch eager on a real checkpoint ({rounds} rounds)\n");
        peer_rounds(&peer, rounds);
    }
    if let (Some((busy0, steal0)), Some((busy1, steal1))) = (start, cpu_jiffies()) {
        let busy = (busy1 - busy0) as f64;
        println!(
            "CPU time stolen by the hypervisor during this run: {:.0}% of busy time.\n",
            100.0 * (steal1 - steal0) as f64 / busy.max(1.0)
        );
    }
}
