//! Train a baseline (p = 0) and a routed (p = 0.5) model on the built-in synthetic corpus, then
//! evaluate both under the paper's sharing plans (100/50/33/25% of layers cached).
//!
//! ```text
//! cargo run --release -p kv-routing-examples --example train_routed
//! cargo run --release -p kv-routing-examples --example train_routed -- --steps 600 --layers 6 --d-model 128
//! ```
//!
//! The defaults train for about a minute on two CPU cores, which is enough to see the mechanics
//! but not the size of the effect; docs/results.md has the longer runs and their numbers.

use std::path::PathBuf;

use clap::Parser;
use kv_routing::CachePlan;
use kv_routing_backend::{device, AutodiffBackend, Backend, NAME};
use kv_routing_train::checkpoint::load_model;
use kv_routing_train::data::Dataset;
use kv_routing_train::evaluate::{evaluate_plans, EvalSettings};
use kv_routing_train::report::{format_table, ModelEvaluation};
use kv_routing_train::tokenizer::TextCodec;
use kv_routing_train::train_config::TrainConfig;
use kv_routing_train::trainer::{checkpoint_dir, train, RunOptions, Start};

/// Train with and without stochastic KV routing, then compare under sharing plans.
#[derive(Parser, Debug)]
struct Args {
    /// Optimizer steps per model.
    #[arg(long, default_value_t = 60)]
    steps: u64,
    /// Decoder layers.
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Width of the residual stream.
    #[arg(long, default_value_t = 64)]
    d_model: usize,
    /// Context length (tokens).
    #[arg(long, default_value_t = 64)]
    seq_len: usize,
    /// Routing probability of the routed model.
    #[arg(long, default_value_t = 0.5)]
    p: f64,
    /// Where the runs are written (default: a fresh temporary directory).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() {
    // Freed activations kept for reuse (an opt-in of programs; docs/backends.md).
    kv_routing_backend::retain_freed_memory();
    let args = Args::parse();
    if let Err(error) = run(&args) {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let device = device();
    let out = match &args.out {
        Some(out) => out.clone(),
        None => std::env::temp_dir().join(format!("kv-routing-train-{}", std::process::id())),
    };
    println!("backend: {NAME}; runs under {}", out.display());
    let mut evaluations = Vec::new();
    for p in [0.0, args.p] {
        let mut config = TrainConfig::small(args.layers, args.d_model, args.seq_len);
        config.p = p;
        config.steps = args.steps;
        config.warmup_steps = (args.steps / 10).max(1);
        config.eval_every = 0;
        config.checkpoint_every = 0;
        let run_dir = out.join(format!("p{p}"));
        let summary = train::<AutodiffBackend>(
            config,
            Start::Fresh,
            &run_dir,
            RunOptions {
                show_progress: true,
                stop_at: None,
                ..Default::default()
            },
            &device,
        )?;
        println!(
            "p = {p}: {} steps in {:.1} s, validation loss {:.3}",
            summary.steps_run, summary.seconds, summary.final_val_loss
        );

        // Evaluate the trained weights without autodiff.
        let (config, model) = load_model::<Backend>(&checkpoint_dir(&run_dir), &device)?;
        let plans = ["full", "every:2", "every:3", "every:4"]
            .iter()
            .map(|spec| {
                Ok((
                    spec.to_string(),
                    CachePlan::parse(spec, config.model.n_layers)?,
                ))
            })
            .collect::<kv_routing_train::Result<Vec<_>>>()?;
        let dataset = Dataset::open(&config.data, config.seq_len)?;
        let settings = EvalSettings {
            batches: 4,
            ..EvalSettings::default()
        };
        evaluations.push(ModelEvaluation {
            name: format!("p{p}"),
            checkpoint: run_dir,
            p,
            steps: config.steps,
            backend: NAME.to_string(),
            settings,
            plans: evaluate_plans(&model, &TextCodec::Bytes, &dataset, &plans, &settings)?,
        });
    }
    print!("{}", format_table(&evaluations));
    Ok(())
}
