//! `kv-routing`: train routed transformers with stochastic KV routing, evaluate them under KV
//! sharing plans, and generate text. The backend is chosen at compile time (default: flex).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use kv_routing::{GenerationConfig, MemoryBudget, Sampler};
use kv_routing_backend::{
    cache_writes_in_place, device, device_with_precision, training_devices, AutodiffBackend,
    Backend, Device, Precision, NAME,
};
use kv_routing_hf::{ExportDtype, ExportOptions, StagedDir};
use kv_routing_train::data::{DataSource, Dataset};
use kv_routing_train::evaluate::{evaluate_plans, EvalSettings};
use kv_routing_train::passkey::PasskeyTask;
use kv_routing_train::plan_spec::parse_plan;
use kv_routing_train::plot::quality_vs_memory_svg;
use kv_routing_train::pretrained::{export_model, load_model_dir, LoadedModel};
use kv_routing_train::report::{format_table, ModelEvaluation};
use kv_routing_train::train_config::TrainConfig;
use kv_routing_train::trainer::{checkpoint_dir, train_on, RunOptions, Start};
use kv_routing_train::{Result, TrainError};

/// Optimizer steps of a new run when `--steps` is not given.
const DEFAULT_STEPS: u64 = 1000;

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
        kv-routing generate --checkpoint runs/p0.5 --plan every:2 --prompt '{ab:X7 cd:Q2} cd?'\n\n\
        A Hugging Face Llama/Mistral/Qwen2/Qwen3 checkpoint directory works wherever a checkpoint \
        does:\n  \
        kv-routing train --init-from ./Qwen2.5-0.5B --data corpus.txt --p 0.5 --seq-len 512 --out runs/qwen\n  \
        kv-routing export --checkpoint runs/qwen --plan every:2 --dtype bf16 --out qwen-rcla\n  \
        kv-routing generate --checkpoint qwen-rcla --prompt 'The capital of France is'"
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
    /// Write a checkpoint in Hugging Face layout (config.json + safetensors + tokenizer).
    Export(ExportArgs),
}

#[derive(Args, Debug)]
struct TrainArgs {
    /// Run directory: the checkpoint goes to <OUT>/checkpoint, metrics to <OUT>/metrics.jsonl.
    #[arg(long)]
    out: PathBuf,
    /// Routing probability: each layer >= 1 reads a random earlier layer's KV with probability p.
    #[arg(long, default_value_t = 0.0)]
    p: f64,
    /// Optimizer steps (default 1000; with --resume, the run's own, and a larger value extends
    /// it, stretching the rest of its learning-rate schedule).
    #[arg(long)]
    steps: Option<u64>,
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
    /// Fine-tune from this checkpoint directory: a run's checkpoint or a Hugging Face checkpoint
    /// (config.json + safetensors). Its model shape is kept (the shape options are ignored); new
    /// p, fresh optimizer. A --data file is tokenized with the checkpoint's tokenizer.json.
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// Stop after this step (with a checkpoint) and resume later with --resume.
    #[arg(long)]
    stop_at: Option<u64>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Refuse a batch whose activations would exceed this much memory, before allocating:
    /// a size (8GiB, 512MB), `available` (what the system has free now) or `none`. On a GPU,
    /// give the device's memory.
    #[arg(long, default_value = "available")]
    memory_budget: MemoryBudget,
    /// Train data-parallel on this many devices (Burn's multi-device strategy): the first N
    /// GPUs on cuda; on the CPU backends and wgpu, N workers sharing the one device. The
    /// batch size must divide evenly; the run is the same whatever N (a run can be resumed on
    /// another N).
    #[arg(long, default_value_t = 1)]
    devices: usize,
}

#[derive(Args, Debug)]
struct EvalArgs {
    /// Checkpoint directory (a run directory or a Hugging Face checkpoint works too); repeat to
    /// compare models.
    #[arg(long, required = true)]
    checkpoint: Vec<PathBuf>,
    /// Evaluate on this UTF-8 text file (tokenized with the model's tokenizer if it has one)
    /// instead of each run's own data; Hugging Face checkpoints default to the synthetic corpus.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Evaluate on this held-out UTF-8 text instead: all of it validates, in consecutive
    /// windows (tokenized with the model's tokenizer if it has one). Implies --seq-len for runs
    /// too.
    #[arg(long, conflicts_with = "data")]
    heldout: Option<PathBuf>,
    /// Also run passkey retrieval with this many prompts (text models): a five-digit key hidden
    /// in filler, asked for at the end; accuracy of the greedy answer.
    #[arg(long, default_value_t = 0)]
    passkey: usize,
    /// Filler lines around the passkey (about 23 tokens each with Llama-family tokenizers).
    #[arg(long, default_value_t = 40)]
    passkey_filler: usize,
    /// Tokens per validation sequence for Hugging Face checkpoints and held-out text (runs use
    /// their own otherwise).
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
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
    /// Precision of weights, activations and KV cache: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: Precision,
}

#[derive(Args, Debug)]
struct GenerateArgs {
    /// Checkpoint directory (a run directory or a Hugging Face checkpoint works too).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Prompt text.
    #[arg(long)]
    prompt: String,
    /// Plan: full, every:K, retention:F, layers:0,3,5. Default: the plan stored with an
    /// exported model (kv_routing.serve_cached_layers), else full.
    #[arg(long)]
    plan: Option<String>,
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
    /// Precision of weights, activations and KV cache: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: Precision,
    /// Refuse a generation whose KV cache and prompt activations would exceed this much
    /// memory, before allocating: a size (8GiB, 512MB), `available` (what the system has free
    /// now) or `none`. On a GPU, give the device's memory.
    #[arg(long, default_value = "available")]
    memory_budget: MemoryBudget,
}

#[derive(Args, Debug)]
struct ExportArgs {
    /// Checkpoint directory (a run directory or a Hugging Face checkpoint works too).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Output directory (replaced if it exists).
    #[arg(long)]
    out: PathBuf,
    /// Weight type: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: ExportDtype,
    /// Plan to serve the model with, stored under kv_routing in config.json (full, every:K,
    /// retention:F, layers:0,3,5).
    #[arg(long)]
    plan: Option<String>,
    /// Largest safetensors shard in MB; bigger models are sharded with an index.
    #[arg(long, default_value_t = 5000)]
    max_shard_mb: u64,
}

fn main() -> ExitCode {
    // Errors are one line; a bug should be one line too, not a trace.
    std::panic::set_hook(Box::new(|info| eprintln!("internal error: {info}")));
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => run_train(args),
        Command::Eval(args) => run_eval(args),
        Command::Generate(args) => run_generate(args),
        Command::Export(args) => run_export(args),
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
            tokenizer: None,
        },
        None => DataSource::Synthetic { seed: args.seed },
    };
    config.steps = args.steps.unwrap_or(DEFAULT_STEPS);
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
        // Resuming continues the run as it was configured (its own length and schedule)
        // unless --steps extends it.
        (true, _) => Start::Resume {
            extend_to: args.steps,
        },
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
        memory_budget: args.memory_budget,
    };
    let summary = train_on::<AutodiffBackend>(
        config,
        start,
        &args.out,
        options,
        &training_devices(args.devices),
    )?;
    let config = &summary.config;
    println!(
        "trained {} steps on {NAME} in {:.1} s (p = {}, {} layers, d_model {}): validation loss {:.4} (full cache)",
        summary.steps_run, summary.seconds, config.p, config.model.n_layers, config.model.d_model, summary.final_val_loss
    );
    println!("checkpoint: {}", checkpoint_dir(&args.out).display());
    Ok(())
}

/// The device for inference at `dtype`, after checking that the backend writes the KV cache in
/// place (a warning on stderr if not: every decode step would copy the whole cache).
fn inference_device(dtype: Precision) -> Result<Device> {
    let device = device_with_precision(dtype).map_err(TrainError::Config)?;
    if cache_writes_in_place() == Some(false) {
        eprintln!(
            "warning: this build of {NAME} copies every cached layer on each decode step \
             (burn-flex without kv-routing's patches/burn-flex); decoding will be slow"
        );
    }
    Ok(device)
}

fn run_eval(args: EvalArgs) -> Result<()> {
    let device = inference_device(args.dtype)?;
    let settings = EvalSettings {
        batches: args.batches,
        batch_size: args.batch_size,
        decode_batch: 4,
        decode_tokens: args.decode_tokens,
        passkey: (args.passkey > 0).then_some(PasskeyTask {
            prompts: args.passkey,
            filler_lines: args.passkey_filler,
            seed: 0,
        }),
    };
    let mut evaluations = Vec::new();
    for path in &args.checkpoint {
        let dir = resolve_checkpoint(path);
        let loaded = load_model_dir::<Backend>(&dir, &device)?;
        let plans = args
            .plans
            .iter()
            .map(|spec| {
                Ok((
                    spec.clone(),
                    parse_plan(spec, loaded.model_config.n_layers)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let (p, steps) = routing_history(&loaded);
        let (data, seq_len) = match (&args.data, &loaded.train_config) {
            (Some(file), run) => (
                DataSource::TextFile {
                    path: file.clone(),
                    seed: 0,
                    tokenizer: tokenizer_file(&loaded),
                },
                run.as_ref().map_or(args.seq_len, |r| r.seq_len),
            ),
            (None, Some(run)) => (run.data.clone(), run.seq_len),
            (None, None) => (DataSource::Synthetic { seed: 0 }, args.seq_len),
        };
        let dataset = match &args.heldout {
            Some(text) => {
                Dataset::open_heldout(text, tokenizer_file(&loaded).as_deref(), args.seq_len)?
            }
            None => Dataset::open(&data, seq_len)?,
        };
        evaluations.push(ModelEvaluation {
            name: run_name(path),
            checkpoint: dir.clone(),
            p,
            steps,
            backend: format!("{NAME} {}", args.dtype.name()),
            settings,
            plans: evaluate_plans(&loaded.model, &loaded.codec, &dataset, &plans, &settings)?,
        });
    }
    print!("{}", format_table(&evaluations));
    if let Some(out) = args.out {
        std::fs::create_dir_all(&out).map_err(|e| TrainError::Io {
            path: out.clone(),
            source: e.into(),
        })?;
        let json_path = out.join("eval.json");
        let json = serde_json::to_string_pretty(&evaluations).expect("reports serialize");
        std::fs::write(&json_path, json).map_err(|e| TrainError::Io {
            path: json_path.clone(),
            source: e.into(),
        })?;
        let svg_path = out.join("quality_vs_memory.svg");
        std::fs::write(&svg_path, quality_vs_memory_svg(&evaluations)).map_err(|e| {
            TrainError::Io {
                path: svg_path.clone(),
                source: e.into(),
            }
        })?;
        println!("wrote {} and {}", json_path.display(), svg_path.display());
    }
    Ok(())
}

fn run_generate(args: GenerateArgs) -> Result<()> {
    let device = inference_device(args.dtype)?;
    let loaded = load_model_dir::<Backend>(&resolve_checkpoint(&args.checkpoint), &device)?;
    let n_layers = loaded.model_config.n_layers;
    let (plan_name, plan) = match (&args.plan, loaded.stored_plan()?) {
        (Some(spec), _) => (spec.clone(), parse_plan(spec, n_layers)?),
        (None, Some(stored)) => ("stored with the model".to_string(), stored),
        (None, None) => ("full".to_string(), parse_plan("full", n_layers)?),
    };
    let prompt = loaded.codec.encode(&args.prompt)?;
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
    let generation = loaded.model.generate(
        std::slice::from_ref(&prompt),
        &plan.route(),
        &GenerationConfig {
            max_new_tokens: args.max_new_tokens,
            sampler,
            seed: args.seed,
            stop_tokens: loaded.end_of_sequence_ids(),
            memory_budget: args.memory_budget,
        },
    )?;
    // Decoding the continuation alone would lose the space a tokenizer folds into its first
    // token; decode prompt + continuation and print what follows the decoded prompt.
    let prompt_text = loaded.codec.decode(&prompt)?;
    let full_text = loaded
        .codec
        .decode(&[prompt.as_slice(), &generation.tokens[0]].concat())?;
    match full_text.strip_prefix(&prompt_text) {
        Some(continuation) => println!("{}{continuation}", args.prompt),
        None => println!("{full_text}"),
    }
    let new_tokens = generation.tokens[0].len();
    let decode_rate = match generation.decode_steps {
        0 => String::new(),
        steps => format!(
            ", then {:.1} new tokens/s",
            steps as f64 / generation.decode_seconds
        ),
    };
    eprintln!(
        "[{NAME} {}, {} tokens, plan {plan_name} caching layers {:?}: {} bytes of KV cache; \
         {} prompt + {new_tokens} new tokens in {:.2} s: first token after {:.2} s{decode_rate}]",
        args.dtype.name(),
        loaded.codec.name(),
        plan.cached_layers(),
        generation.kv_bytes(),
        prompt.len(),
        generation.prefill_seconds + generation.decode_seconds,
        generation.prefill_seconds,
    );
    Ok(())
}

fn run_export(args: ExportArgs) -> Result<()> {
    let device = device();
    let loaded = load_model_dir::<Backend>(&resolve_checkpoint(&args.checkpoint), &device)?;
    let plan = args
        .plan
        .as_deref()
        .map(|spec| parse_plan(spec, loaded.model_config.n_layers))
        .transpose()?;
    let options = ExportOptions {
        dtype: args.dtype,
        max_shard_bytes: args.max_shard_mb.max(1) * 1_000_000,
        ..ExportOptions::default()
    };
    let config = export_model(&loaded, &args.out, plan.as_ref(), options)?;
    println!(
        "wrote {} ({}, {} layers, {}{})",
        args.out.display(),
        config.architectures.join(","),
        config.num_hidden_layers,
        args.dtype.torch_name(),
        plan.map(|p| format!(", serve caching layers {:?}", p.cached_layers()))
            .unwrap_or_default()
    );
    Ok(())
}

/// Routing probability and steps the weights were trained with (0, 0 if never).
fn routing_history(loaded: &LoadedModel<Backend>) -> (f64, u64) {
    match (&loaded.train_config, &loaded.hf_config) {
        (Some(run), _) => (run.p, run.steps),
        (None, Some(config)) => config
            .kv_routing
            .as_ref()
            .map_or((0.0, 0), |r| (r.routing_p, r.routed_steps)),
        (None, None) => (0.0, 0),
    }
}

/// The model's tokenizer (its tokenizer.json, or the GGUF file), if it has one.
fn tokenizer_file(loaded: &LoadedModel<Backend>) -> Option<PathBuf> {
    kv_routing_train::pretrained::tokenizer_file(&loaded.dir)
}

/// A run directory stands for its checkpoint.
fn resolve_checkpoint(path: &Path) -> PathBuf {
    let inner = checkpoint_dir(path);
    // A save or export killed between its two renames left the previous directory in
    // `<dir>.old`: put it back (best effort; a failure shows as the directory missing).
    for dir in [&inner, path] {
        let _ = StagedDir::recover(dir);
    }
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
    // A GGUF file is named without its extension.
    let name = if path.extension().is_some_and(|e| e == "gguf") {
        path.file_stem()
    } else {
        path.file_name()
    };
    name.map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
