//! `kv-routing`: train routed transformers with stochastic KV routing, evaluate them under KV
//! sharing plans, and generate text. The backend is chosen at compile time (default: flex).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use kv_routing::{GenerationConfig, Sampler};
use kv_routing_backend::{device, AutodiffBackend, Backend, NAME};
use kv_routing_train::checkpoint::load_model;
use kv_routing_train::data::{DataSource, Dataset};
use kv_routing_train::evaluate::{evaluate_plans, EvalSettings};
use kv_routing_train::plan_spec::parse_plan;
use kv_routing_train::plot::quality_vs_memory_svg;
use kv_routing_train::report::{format_table, ModelEvaluation};
use kv_routing_train::tokenizer::{decode, encode};
use kv_routing_train::train_config::TrainConfig;
use kv_routing_train::trainer::{checkpoint_dir, train, RunOptions, Start};
use kv_routing_train::{Result, TrainError};

#[derive(Parser, Debug)]
#[command(
    name = "kv-routing",
    version,
    about = "Train transformers with stochastic KV routing (R-CLA) and run them with a shared KV cache",
    long_about = "Train transformers with stochastic KV routing (R-CLA) and run them with a shared KV cache.\n\n\
        A model trained with routing probability p > 0 can afterwards cache only some of its layers \
        (every 2nd, 3rd, 4th...) while the others read the nearest cached layer below them.\n\n\
        Typical session:\n  \
        kv-routing train --out runs/p0.5 --p 0.5\n  \
        kv-routing eval --checkpoint runs/p0.5 --out results\n  \
        kv-routing generate --checkpoint runs/p0.5 --plan every:2 --prompt '{ab:X7 cd:Q2} cd?'"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a model (or resume, or fine-tune from a checkpoint) with routing probability p.
    Train(TrainArgs),
    /// Evaluate checkpoints under sharing plans: loss, recall accuracy, KV bytes, decode speed.
    Eval(EvalArgs),
    /// Generate text from a prompt with a checkpoint under a sharing plan.
    Generate(GenerateArgs),
}

#[derive(Args, Debug)]
struct TrainArgs {
    /// Run directory: the checkpoint goes to <OUT>/checkpoint, metrics to <OUT>/metrics.jsonl.
    #[arg(long)]
    out: PathBuf,
    /// Routing probability: each layer >= 1 reads a random earlier layer's KV with probability p.
    #[arg(long, default_value_t = 0.0)]
    p: f64,
    /// Optimizer steps.
    #[arg(long, default_value_t = 1000)]
    steps: u64,
    /// Decoder layers.
    #[arg(long, default_value_t = 6)]
    layers: usize,
    /// Width of the residual stream.
    #[arg(long, default_value_t = 128)]
    d_model: usize,
    /// Query heads (default: d_model / 32).
    #[arg(long)]
    heads: Option<usize>,
    /// Key/value heads (default: half the query heads).
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Context length in tokens (bytes).
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Final learning rate of the cosine decay (default: lr / 10).
    #[arg(long)]
    min_lr: Option<f64>,
    /// Linear warmup steps.
    #[arg(long, default_value_t = 100)]
    warmup: u64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f64,
    /// Maximum global gradient norm.
    #[arg(long, default_value_t = 1.0)]
    grad_clip: f64,
    /// Validate every N steps.
    #[arg(long, default_value_t = 250)]
    eval_every: u64,
    /// Validation batches.
    #[arg(long, default_value_t = 8)]
    eval_batches: usize,
    /// Checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 500)]
    checkpoint_every: u64,
    /// Seed of the weights, the routes and the data.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train on this UTF-8 text file instead of the built-in synthetic corpus.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Continue the run in <OUT> (its settings are kept; --steps may extend it).
    #[arg(long, conflicts_with = "init_from")]
    resume: bool,
    /// Fine-tune from this checkpoint directory (its model shape is kept; new p, fresh optimizer).
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// Stop after this step (with a checkpoint) and resume later with --resume.
    #[arg(long)]
    stop_at: Option<u64>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct EvalArgs {
    /// Checkpoint directory (a run directory works too); repeat to compare models.
    #[arg(long, required = true)]
    checkpoint: Vec<PathBuf>,
    /// Comma-separated plans: full, every:K, retention:F, layers:0,3,5.
    #[arg(
        long,
        default_value = "full,every:2,every:3,every:4",
        value_delimiter = ','
    )]
    plans: Vec<String>,
    /// Write eval.json and quality_vs_memory.svg here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Validation batches per plan.
    #[arg(long, default_value_t = 16)]
    batches: usize,
    /// Sequences per validation batch.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Tokens decoded per sequence when measuring decode speed.
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
}

#[derive(Args, Debug)]
struct GenerateArgs {
    /// Checkpoint directory (a run directory works too).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Prompt text.
    #[arg(long)]
    prompt: String,
    /// Plan: full, every:K, retention:F, layers:0,3,5.
    #[arg(long, default_value = "full")]
    plan: String,
    /// New tokens (bytes) at most.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Sample among the k most likely tokens (with --temperature > 0).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> ExitCode {
    // Errors are one line; a bug should be one line too, not a trace.
    std::panic::set_hook(Box::new(|info| eprintln!("internal error: {info}")));
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => run_train(args),
        Command::Eval(args) => run_eval(args),
        Command::Generate(args) => run_generate(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run_train(args: TrainArgs) -> Result<()> {
    let mut config = TrainConfig::small(args.layers, args.d_model, args.seq_len);
    let heads = args.heads.unwrap_or(config.model.n_heads);
    config.model.n_heads = heads;
    config.model.n_kv_heads = Some(args.kv_heads.unwrap_or((heads / 2).max(1)));
    config.p = args.p;
    config.route_seed = args.seed;
    config.init_seed = args.seed;
    config.data = match args.data {
        Some(path) => DataSource::TextFile {
            path,
            seed: args.seed,
        },
        None => DataSource::Synthetic { seed: args.seed },
    };
    config.steps = args.steps;
    config.batch_size = args.batch_size;
    config.learning_rate = args.lr;
    config.min_learning_rate = args.min_lr.unwrap_or(args.lr / 10.0);
    config.warmup_steps = args.warmup;
    config.weight_decay = args.weight_decay;
    config.grad_clip = args.grad_clip;
    config.eval_every = args.eval_every;
    config.eval_batches = args.eval_batches;
    config.checkpoint_every = args.checkpoint_every;
    let start = match (args.resume, args.init_from) {
        (true, _) => Start::Resume,
        (false, Some(dir)) => Start::InitFrom(resolve_checkpoint(&dir)),
        (false, None) => Start::Fresh,
    };
    if start == Start::Fresh && checkpoint_dir(&args.out).exists() {
        return Err(TrainError::Config(format!(
            "{} already holds a checkpoint; pass --resume to continue it or choose another --out",
            args.out.display()
        )));
    }
    let options = RunOptions {
        show_progress: !args.quiet,
        stop_at: args.stop_at,
    };
    let summary = train::<AutodiffBackend>(config, start, &args.out, options, &device())?;
    let config = &summary.config;
    println!(
        "trained {} steps on {NAME} in {:.1} s (p = {}, {} layers, d_model {}): validation loss {:.4} (full cache)",
        summary.steps_run, summary.seconds, config.p, config.model.n_layers, config.model.d_model, summary.final_val_loss
    );
    println!("checkpoint: {}", checkpoint_dir(&args.out).display());
    Ok(())
}

fn run_eval(args: EvalArgs) -> Result<()> {
    let device = device();
    let settings = EvalSettings {
        batches: args.batches,
        batch_size: args.batch_size,
        decode_batch: 4,
        decode_tokens: args.decode_tokens,
    };
    let mut evaluations = Vec::new();
    for path in &args.checkpoint {
        let dir = resolve_checkpoint(path);
        let (config, model) = load_model::<Backend>(&dir, &device)?;
        let plans = args
            .plans
            .iter()
            .map(|spec| Ok((spec.clone(), parse_plan(spec, config.model.n_layers)?)))
            .collect::<Result<Vec<_>>>()?;
        let dataset = Dataset::open(&config.data, config.seq_len)?;
        evaluations.push(ModelEvaluation {
            name: run_name(path),
            checkpoint: dir.clone(),
            p: config.p,
            steps: config.steps,
            backend: NAME.to_string(),
            settings,
            plans: evaluate_plans(&model, &dataset, &plans, &settings)?,
        });
    }
    print!("{}", format_table(&evaluations));
    if let Some(out) = args.out {
        std::fs::create_dir_all(&out).map_err(|e| TrainError::Io {
            path: out.clone(),
            message: e.to_string(),
        })?;
        let json_path = out.join("eval.json");
        let json = serde_json::to_string_pretty(&evaluations).expect("reports serialize");
        std::fs::write(&json_path, json).map_err(|e| TrainError::Io {
            path: json_path.clone(),
            message: e.to_string(),
        })?;
        let svg_path = out.join("quality_vs_memory.svg");
        std::fs::write(&svg_path, quality_vs_memory_svg(&evaluations)).map_err(|e| {
            TrainError::Io {
                path: svg_path.clone(),
                message: e.to_string(),
            }
        })?;
        println!("wrote {} and {}", json_path.display(), svg_path.display());
    }
    Ok(())
}

fn run_generate(args: GenerateArgs) -> Result<()> {
    let device = device();
    let (config, model) = load_model::<Backend>(&resolve_checkpoint(&args.checkpoint), &device)?;
    let plan = parse_plan(&args.plan, config.model.n_layers)?;
    let prompt = encode(&args.prompt);
    if prompt.is_empty() {
        return Err(TrainError::Config("the prompt is empty".into()));
    }
    let sampler = if args.temperature > 0.0 {
        Sampler::TopK {
            k: args.top_k,
            temperature: args.temperature,
        }
    } else {
        Sampler::Greedy
    };
    let generation = model.generate(
        &[prompt],
        &plan.route(),
        &GenerationConfig {
            max_new_tokens: args.max_new_tokens,
            sampler,
            seed: args.seed,
            stop_token: None,
        },
    )?;
    println!("{}{}", args.prompt, decode(&generation.tokens[0]));
    eprintln!(
        "[{NAME}, plan {} caching layers {:?}: {} bytes of KV cache]",
        args.plan,
        plan.cached_layers(),
        generation.kv_bytes()
    );
    Ok(())
}

/// A run directory stands for its checkpoint.
fn resolve_checkpoint(path: &Path) -> PathBuf {
    let inner = checkpoint_dir(path);
    if inner.is_dir() {
        inner
    } else {
        path.to_path_buf()
    }
}

fn run_name(path: &Path) -> String {
    let path = if path.file_name().is_some_and(|n| n == "checkpoint") {
        path.parent().unwrap_or(path)
    } else {
        path
    };
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
