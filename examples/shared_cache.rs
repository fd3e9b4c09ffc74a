//! The main job: build a small routed model and generate with a shared KV cache under the
//! paper's plans (100/50/33/25% of layers cached), printing the KV bytes each plan holds.
//!
//! ```text
//! cargo run --release -p kv-routing-examples --example shared_cache
//! cargo run --release -p kv-routing-examples --no-default-features --features wgpu --example shared_cache
//! ```
//!
//! The weights are random (seeded), so the text is noise: this shows memory and the mechanics.
//! Trained models and quality under sharing are the subject of the training CLI.

use std::time::Instant;

use clap::Parser;
use kv_routing::{CachePlan, GenerationConfig, RoutedTransformerConfig};
use kv_routing_backend::{device, Backend, NAME};
use kv_routing_examples::format_bytes;

/// Generate with a routed KV cache under several sharing plans.
#[derive(Parser, Debug)]
struct Args {
    /// Decoder layers.
    #[arg(long, default_value_t = 12)]
    layers: usize,
    /// Width of the residual stream.
    #[arg(long, default_value_t = 256)]
    d_model: usize,
    /// New tokens per prompt.
    #[arg(long, default_value_t = 48)]
    new_tokens: usize,
}

fn main() {
    let args = Args::parse();
    if let Err(error) = run(&args) {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), kv_routing::KvRoutingError> {
    let device = device();
    let config =
        RoutedTransformerConfig::new(256, args.d_model, args.layers, 8, args.d_model * 8 / 3)
            .with_n_kv_heads(Some(4))
            .with_max_seq_len(1024);
    let model = config.init_seeded::<Backend>(7, &device)?;
    let prompts: Vec<Vec<u32>> = [
        "The cache of a transformer grows with every layer",
        "Routing shares keys and values",
        "Layer zero always keeps its own",
        "Depth-wise sharing",
    ]
    .iter()
    .map(|p| p.bytes().map(u32::from).collect())
    .collect();
    println!(
        "backend {NAME}: {} layers, d_model {}, 8 query / 4 KV heads, batch {}, {} new tokens each\n",
        args.layers,
        args.d_model,
        prompts.len(),
        args.new_tokens
    );
    println!(
        "{:<14} {:>7} {:>12} {:>14} {:>12} {:>11}",
        "plan", "layers", "KV bytes", "KV bytes/token", "tokens/s", "same as full"
    );
    let generation = GenerationConfig {
        max_new_tokens: args.new_tokens,
        ..Default::default()
    };
    let tokens_per_sequence = prompts.iter().map(Vec::len).max().unwrap_or(0) + args.new_tokens;
    let mut full_tokens = None;
    for k in 1..=4 {
        let plan = CachePlan::every_kth(args.layers, k)?;
        let start = Instant::now();
        let output = model.generate(&prompts, &plan.route(), &generation)?;
        let seconds = start.elapsed().as_secs_f64();
        let generated: usize = output.tokens.iter().map(Vec::len).sum();
        let reference = full_tokens.get_or_insert_with(|| output.tokens.clone());
        let same = output
            .tokens
            .iter()
            .flatten()
            .zip(reference.iter().flatten())
            .filter(|(a, b)| a == b)
            .count();
        println!(
            "{:<14} {:>7} {:>12} {:>14} {:>12.1} {:>10.0}%",
            format!("every {k} ({:.0}%)", plan.retention_fraction() * 100.0),
            plan.cached_layers().len(),
            format_bytes(output.kv_bytes()),
            format_bytes(output.kv_bytes() / (prompts.len() * tokens_per_sequence)),
            generated as f64 / seconds,
            100.0 * same as f64 / generated as f64,
        );
    }

    // Adaptive shrinking: a live cache drops to 25% of its layers mid-generation.
    let mut cache = model.new_cache(
        prompts.len(),
        tokens_per_sequence,
        CachePlan::full(args.layers)?.route(),
    )?;
    model.forward_cached_last(&prompts, &mut cache)?;
    let before = cache.bytes();
    cache.retarget(CachePlan::every_kth(args.layers, 4)?.route())?;
    let step: Vec<Vec<u32>> = prompts.iter().map(|_| vec![u32::from(b' ')]).collect();
    model.forward_cached_last(&step, &mut cache)?;
    println!(
        "\nretarget mid-generation from full to every-4th: {} -> {} (cached layers {:?})",
        format_bytes(before),
        format_bytes(cache.bytes()),
        cache.cached_layers()
    );
    let first = &full_tokens.unwrap_or_default()[0];
    println!("first continuation under the full plan (byte ids): {first:?}");
    println!(
        "(random weights: an untrained model's outputs change under sharing; a model trained \
         with stochastic routing keeps them close)"
    );
    Ok(())
}
