//! The main job: two trained models that ship with the repository — the same small transformer
//! trained with stochastic routing (p = 0.5) and without (p = 0) — run with 100%, 50% and 33% of
//! their layers caching keys and values. The routed model keeps its quality and its text when
//! most layers stop caching; the baseline does not.
//!
//! ```text
//! cargo run --release -p kv-routing-examples --example shared_cache
//! cargo run --release -p kv-routing-examples --no-default-features --features wgpu --example shared_cache
//! ```
//!
//! The models are in `examples/models/` (how they were trained: examples/models/README.md);
//! the CLI takes them too: `kv-routing generate --checkpoint examples/models/routed-p0.5
//! --prompt 'the quick fox ' --plan every:3`.

use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use kv_routing_backend::{device, Backend, NAME};
use kv_routing_examples::bundled::{BUNDLED_MODELS, TRAINED_SEQ_LEN};
use kv_routing_examples::comparison_table::render_comparison;
use kv_routing_examples::plan_comparison::{compare_plans, ComparisonSettings};

/// Compare a routed and a baseline model under KV sharing plans.
#[derive(Parser, Debug)]
struct Args {
    /// Validation batches (16 sequences of 128 bytes each) for the held-out loss.
    #[arg(long, default_value_t = 8)]
    batches: usize,
    /// Bytes generated after each prompt at most (a continuation ends with its sentence).
    #[arg(long, default_value_t = 48)]
    new_tokens: usize,
}

fn main() {
    // Freed activations kept for reuse (an opt-in of programs; docs/backends.md).
    kv_routing_backend::retain_freed_memory();
    let args = Args::parse();
    let settings = ComparisonSettings {
        batches: args.batches,
        new_tokens: args.new_tokens,
        ..Default::default()
    };
    let start = Instant::now();
    let progress = ProgressBar::new((BUNDLED_MODELS.len() * settings.every.len()) as u64)
        .with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} ({elapsed})")
                .expect("a valid template"),
        );
    let outcomes = BUNDLED_MODELS
        .iter()
        .map(|model| compare_plans::<Backend>(model, &settings, &device(), &progress))
        .collect::<Result<Vec<_>, _>>();
    progress.finish_and_clear();
    let outcomes = match outcomes {
        Ok(outcomes) => outcomes,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
    };
    let first = &outcomes[0];
    let trained_with: Vec<String> = outcomes
        .iter()
        .map(|o| {
            format!(
                "{} with routing probability p = {}",
                o.model.name, o.trained_p
            )
        })
        .collect();
    println!(
        "Two {}-layer byte-level transformers (d_model {}), trained {} steps on the same text: \
         {}; backend {NAME}.",
        first.n_layers,
        first.d_model,
        first.trained_steps,
        trained_with.join(", ")
    );
    println!(
        "loss: held-out nats per byte ({} x {} sequences of {TRAINED_SEQ_LEN} bytes); same greedy: \
         share of those positions where the plan's greedy next byte is the full cache's.\n",
        settings.batches, settings.batch_size
    );
    print!("{}", render_comparison(&outcomes, &settings));
    println!("\nfinished in {:.1} s", start.elapsed().as_secs_f64());
}
