//! `kv-routing train`: a new run, a resumed one, or a fine-tune from a checkpoint.
//!
//! The run writes its own directory (`--out`): it is that checkpoint's only writer, and
//! `--resume` finishes a save of it that was killed mid-commit. `--init-from` only reads the
//! checkpoint it starts from.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use kv_routing::{MemoryBudget, RouteDraw, SharingAdapterConfig};
use kv_routing_backend::{training_devices, AutodiffBackend, NAME};
use kv_routing_hf::StagedDir;
use kv_routing_train::data::DataSource;
use kv_routing_train::distillation::Distillation;
use kv_routing_train::nodes::NodeConfig;
use kv_routing_train::train_config::TrainConfig;
use kv_routing_train::trainer::{checkpoint_dir, train_on, RunOptions, Start};

use crate::checkpoint_path::resolve_checkpoint;
use crate::error::{CliError, Result};

/// Optimizer steps of a new run when `--steps` is not given.
const DEFAULT_STEPS: u64 = 1000;

/// A set of defaults for the training flags, each of which a flag given on the command line
/// overrides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Recipe {
    /// Make a pretrained model routing-robust (docs/training.md, "make your model
    /// routing-robust"): rank-64 sharing adapters, the base frozen, every step serving every:2,
    /// distillation from the starting model (KL at temperature 1 + hidden states x 10),
    /// 1 x 512 tokens a step, 1,800 steps at a peak rate of 2e-3 (20 warmup steps, no weight
    /// decay). The full plan stays the starting model exactly. Needs --init-from.
    SharingAdapters,
    /// The second phase of `sharing-adapters`: its adapters trained further on windows of
    /// 2,048 tokens, so that the shared paths see the distances of long prompts (every window of
    /// the first phase is 512 tokens): 360 steps at a peak rate of 5e-4 (10 warmup steps,
    /// cosine to 1e-4), data seed 1 (other windows than the first phase's), the same loss but
    /// for the KL's temperature: 2, as measured.
    /// Needs --init-from a checkpoint of the first phase (one with sharing adapters).
    SharingAdaptersLong,
}

impl Recipe {
    /// Whether the recipe continues a checkpoint's sharing adapters (and refuses one without).
    fn continues_adapters(self) -> bool {
        self == Recipe::SharingAdaptersLong
    }
}

/// What a run uses for each flag the command line leaves out.
struct Defaults {
    p: f64,
    steps: u64,
    seq_len: usize,
    batch_size: usize,
    lr: f64,
    warmup: u64,
    weight_decay: f64,
    route_draw: RouteDraw,
    distill: bool,
    distill_temperature: f64,
    distill_hidden_weight: f64,
    sharing_adapter: Option<usize>,
    /// Final rate of the cosine decay, as a fraction of the peak rate.
    min_lr_fraction: f64,
    seed: u64,
}

impl Defaults {
    fn of(recipe: Option<Recipe>) -> Self {
        match recipe {
            None => Defaults {
                p: 0.0,
                steps: DEFAULT_STEPS,
                seq_len: 128,
                batch_size: 16,
                lr: 3e-3,
                warmup: 100,
                weight_decay: 0.1,
                route_draw: RouteDraw::IndependentLayers,
                distill: false,
                // SwiftKV's (Llama-3.1 retrofitted by distillation).
                distill_temperature: 2.0,
                distill_hidden_weight: 0.0,
                sharing_adapter: None,
                min_lr_fraction: 0.1,
                seed: 0,
            },
            // Measured on SmolLM2-135M (docs/results.md, sessions 42-43): rank 64 matches
            // training every weight under every:2; 2e-3 beat 1e-3 and 4e-3 at 90 steps; steps
            // of 512 tokens progressed as fast per step as steps of 2,048. Sessions 46-48:
            // temperature 1 ahead of SwiftKV's 2 at every point of the 1,800 steps (every:2
            // 20.57 against 21.69 at the end, ~800-token passkeys 72% against 68%; ~2,000-token
            // ones 9% against 17%, which the long phase below is for).
            Some(Recipe::SharingAdapters) => Defaults {
                p: 1.0,
                steps: 1800,
                seq_len: 512,
                batch_size: 1,
                lr: 2e-3,
                warmup: 20,
                weight_decay: 0.0,
                route_draw: RouteDraw::EveryKth { max_k: 2 },
                distill: true,
                distill_temperature: 1.0,
                distill_hidden_weight: 10.0,
                sharing_adapter: Some(64),
                min_lr_fraction: 0.1,
                seed: 0,
            },
            // Measured on SmolLM2-135M (docs/results.md, session 44, `ad64P`): after the first
            // phase, 2,048-token windows raised every:2's retrieval of ~2,000-token passkeys.
            Some(Recipe::SharingAdaptersLong) => Defaults {
                steps: 360,
                seq_len: 2048,
                lr: 5e-4,
                warmup: 10,
                min_lr_fraction: 0.2,
                seed: 1,
                // The checkpoint's own adapters (whatever their rank) continue.
                sharing_adapter: None,
                // As measured (`ad64P`); after a first phase at temperature 1, ~2,000-token
                // passkeys fell from 17% to 9% (session 48), and temperature 1 here is not
                // measured yet.
                distill_temperature: 2.0,
                ..Defaults::of(Some(Recipe::SharingAdapters))
            },
        }
    }
}

/// The options of `kv-routing train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Run directory: the checkpoint goes to <OUT>/checkpoint, metrics to <OUT>/metrics.jsonl.
    #[arg(long)]
    out: PathBuf,
    /// Defaults for the flags below from a measured recipe; flags given still override them.
    #[arg(long, requires = "init_from", conflicts_with = "resume")]
    recipe: Option<Recipe>,
    /// Routing probability: each layer >= 1 reads a random earlier layer's KV with probability p
    /// (default 0).
    #[arg(long)]
    p: Option<f64>,
    /// Optimizer steps (default 1000, or the --recipe's; with --resume, the run's own, and a
    /// larger value extends it, stretching the rest of its learning-rate schedule).
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
    /// Context length in tokens (bytes) (default 128).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Sequences per step (default 16).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate (default 3e-3).
    #[arg(long)]
    lr: Option<f64>,
    /// Final learning rate of the cosine decay (default: lr / 10, or the --recipe's fraction).
    #[arg(long)]
    min_lr: Option<f64>,
    /// Linear warmup steps (default 100).
    #[arg(long)]
    warmup: Option<u64>,
    /// AdamW weight decay (default 0.1).
    #[arg(long)]
    weight_decay: Option<f64>,
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
    /// Seed of the weights, the routes and the data (default 0, or the --recipe's).
    #[arg(long)]
    seed: Option<u64>,
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
    /// Train as one of this many nodes (processes, on this machine or several): start the same
    /// command on each with its own --node-rank; the batch is split over nodes x devices and
    /// every step sums the gradients over the nodes, so the run is the one of a single node.
    #[arg(long, env = "KV_ROUTING_NODES", default_value_t = 1)]
    nodes: usize,
    /// This node's rank, 0..N. Rank 0 listens at --coordinator and is the only node that
    /// writes the run directory; the others read it to resume.
    #[arg(long, env = "KV_ROUTING_NODE_RANK", default_value_t = 0)]
    node_rank: usize,
    /// host:port where rank 0 listens and the other nodes connect (with --nodes > 1).
    #[arg(long, env = "KV_ROUTING_COORDINATOR")]
    coordinator: Option<String>,
    /// Seconds a node waits for the others: to join, and for any one exchange of a step.
    #[arg(long, env = "KV_ROUTING_NODE_TIMEOUT", default_value_t = 300.0)]
    node_timeout: f64,
    /// Where the sharing steps' routes come from: `layers` (the paper's: each layer
    /// independently reads a random earlier layer), `every:K` (each sharing step serves the
    /// plan every:k, k uniform in 2..=K), `plans:F` (a random plan caching at least the
    /// fraction F of the layers) or `fixed:layers:0,3,5` (the one plan you will serve, e.g. a
    /// calibrated plan from `kv-routing plan`). A step shares with probability --p. Default
    /// `layers`.
    #[arg(long)]
    route_draw: Option<RouteDraw>,
    /// Self-distillation: the loss is the KL divergence from the frozen starting model's
    /// (--init-from) full-cache next-token distribution instead of cross-entropy.
    #[arg(long)]
    distill: bool,
    /// Distill from this model (a run, Hugging Face directory or GGUF file) instead of the
    /// --init-from one; implies --distill.
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// Softmax temperature of distillation (both distributions). Default: 2 (SwiftKV's), or the
    /// --recipe's.
    #[arg(long)]
    distill_temperature: Option<f64>,
    /// Weight of the data's cross-entropy mixed into the distillation loss, in [0, 1].
    #[arg(long, default_value_t = 0.0)]
    distill_ce_weight: f64,
    /// On sharing steps, also distill the full-cache pass with this weight (a second student
    /// pass per sharing step), holding the full cache to the teacher on every step.
    #[arg(long, default_value_t = 0.0)]
    distill_full_weight: f64,
    /// On sharing steps, also pull the student's hidden state after every block towards the
    /// teacher's (full cache) with this weight: a direct signal to each layer that reads
    /// another layer's keys/values (default 0).
    #[arg(long)]
    distill_hidden_weight: Option<f64>,
    /// On sharing steps, weight each position's distillation term by its own size to this
    /// power, in [0, 4] (`w = l^γ / mean(l^γ)`, constants of the step): the loss leans towards
    /// the positions where the shared path departs most from the teacher, such as the few
    /// tokens of a window that need a distant one (default 0: every position alike).
    #[arg(long, default_value_t = 0.0)]
    distill_focus: f64,
    /// Train only sharing adapters of this rank: low-rank weights on every projection that
    /// passes sharing keys/values add and the full plan never uses, so the full cache stays
    /// the starting model's exactly (docs/training.md).
    #[arg(long)]
    sharing_adapter: Option<usize>,
    /// LoRA alpha of the sharing adapters (with --sharing-adapter or a recipe that has them):
    /// their deltas are scaled by alpha / rank. Default: the rank (scale 1).
    #[arg(long)]
    sharing_adapter_alpha: Option<f64>,
    /// LoRA+: the sharing adapters' `up` matrices learn at this multiple of the learning rate,
    /// in (0, 256] (default: the same rate as the rest; LoRA+ suggests 16, but with the recipe
    /// on SmolLM2 4, 16 and 0.5 all did worse than 1, docs/results.md). A resumed run keeps its
    /// own.
    #[arg(long, conflicts_with = "resume")]
    adapter_up_lr_ratio: Option<f64>,
}

/// Runs `kv-routing train`.
pub fn run_train(args: TrainArgs) -> Result<()> {
    let nodes = node_config(&args)?;
    let defaults = Defaults::of(args.recipe);
    let seq_len = args.seq_len.unwrap_or(defaults.seq_len);
    let lr = args.lr.unwrap_or(defaults.lr);
    let sharing_adapter = args.sharing_adapter.or(defaults.sharing_adapter);
    if args.sharing_adapter_alpha.is_some() && sharing_adapter.is_none() {
        return Err(CliError::Setting(
            "--sharing-adapter-alpha scales sharing adapters: give --sharing-adapter R (or a --recipe that has them)".into(),
        ));
    }
    if let (Some(recipe), Some(start)) = (args.recipe, &args.init_from) {
        if recipe.continues_adapters() && !has_sharing_adapters(start)? {
            return Err(CliError::Setting(format!(
                "--recipe sharing-adapters-long continues the sharing adapters of a checkpoint trained with --recipe sharing-adapters; {} has none",
                start.display()
            )));
        }
    }
    let seed = args.seed.unwrap_or(defaults.seed);
    let mut config = TrainConfig::small(args.layers, args.d_model, seq_len);
    let heads = args.heads.unwrap_or(config.model.n_heads);
    config.model.n_heads = heads;
    config.model.n_kv_heads = Some(args.kv_heads.unwrap_or((heads / 2).max(1)));
    config.p = args.p.unwrap_or(defaults.p);
    config.route_seed = seed;
    config.init_seed = seed;
    config.data = match args.data {
        Some(path) => DataSource::TextFile {
            path,
            seed,
            tokenizer: None,
        },
        None => DataSource::Synthetic { seed },
    };
    config.steps = args.steps.unwrap_or(defaults.steps);
    config.batch_size = args.batch_size.unwrap_or(defaults.batch_size);
    config.learning_rate = lr;
    config.min_learning_rate = args.min_lr.unwrap_or(lr * defaults.min_lr_fraction);
    config.warmup_steps = args.warmup.unwrap_or(defaults.warmup);
    config.weight_decay = args.weight_decay.unwrap_or(defaults.weight_decay);
    config.grad_clip = args.grad_clip;
    config.eval_every = args.eval_every;
    config.eval_batches = args.eval_batches;
    config.checkpoint_every = args.checkpoint_every;
    config.route_draw = args.route_draw.unwrap_or(defaults.route_draw);
    config.model.sharing_adapter = sharing_adapter
        .map(|rank| SharingAdapterConfig::new(rank).with_alpha(args.sharing_adapter_alpha));
    config.adapter_up_lr_ratio = args.adapter_up_lr_ratio;
    let distill = args.distill || defaults.distill;
    let teacher = match (&args.teacher, distill, &args.init_from) {
        (Some(teacher), _, _) => Some(teacher.clone()),
        (None, true, Some(init_from)) => Some(init_from.clone()),
        (None, true, None) if !args.resume => {
            return Err(CliError::Setting(
                "--distill distills from the --init-from model: give --init-from or --teacher"
                    .into(),
            ))
        }
        _ => None,
    };
    if let Some(teacher) = teacher {
        // Absolute, so that a resumed run started elsewhere finds its teacher again.
        let teacher = resolve_checkpoint(&teacher)?;
        let teacher = std::path::absolute(&teacher).unwrap_or(teacher);
        let own = std::path::absolute(checkpoint_dir(&args.out)).unwrap_or_default();
        if teacher == own {
            return Err(CliError::Setting(
                "the teacher is this run's own checkpoint, which training changes; distill from a frozen model".into(),
            ));
        }
        config.distill = Some(Distillation {
            temperature: args
                .distill_temperature
                .unwrap_or(defaults.distill_temperature),
            ce_weight: args.distill_ce_weight,
            full_plan_weight: args.distill_full_weight,
            hidden_weight: args
                .distill_hidden_weight
                .unwrap_or(defaults.distill_hidden_weight),
            position_focus: args.distill_focus,
            ..Distillation::from_teacher(teacher)
        });
    }
    let start = match (args.resume, args.init_from) {
        // Resuming continues the run as it was configured (its own length and schedule)
        // unless --steps extends it.
        (true, _) => Start::Resume {
            extend_to: args.steps,
        },
        (false, Some(dir)) => Start::InitFrom(resolve_checkpoint(&dir)?),
        (false, None) => Start::Fresh,
    };
    // A checkpoint whose last save was interrupted mid-commit (only `checkpoint.old` left)
    // holds a run too: a fresh run's first save would put it back and then replace it.
    let checkpoint = checkpoint_dir(&args.out);
    let holds_a_run = matches!(StagedDir::committed(&checkpoint), Ok(dir) if dir.exists());
    if start == Start::Fresh && holds_a_run {
        return Err(CliError::Setting(format!(
            "{} already holds a checkpoint; pass --resume to continue it or choose another --out",
            args.out.display()
        )));
    }
    let node_note = nodes
        .as_ref()
        .map(|n| format!(" as node {} of {}", n.rank, n.nodes))
        .unwrap_or_default();
    let options = RunOptions {
        show_progress: !args.quiet,
        stop_at: args.stop_at,
        memory_budget: args.memory_budget,
        nodes,
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
        "trained {} steps on {NAME}{node_note} in {:.1} s (p = {}, {} layers, d_model {}): validation loss {:.4} (full cache)",
        summary.steps_run, summary.seconds, config.p, config.model.n_layers, config.model.d_model, summary.final_val_loss
    );
    if let Some(exchange) = summary.node_exchange_seconds {
        println!(
            "summing gradients over the nodes: {exchange:.1} s of the {:.1} s",
            summary.seconds
        );
    }
    println!("checkpoint: {}", checkpoint.display());
    Ok(())
}

/// The node settings of `args`: `None` for a run on one node.
fn node_config(args: &TrainArgs) -> Result<Option<NodeConfig>> {
    if args.nodes <= 1 && args.node_rank == 0 {
        if args.nodes == 0 {
            return Err(CliError::Setting("--nodes must be at least 1".into()));
        }
        return Ok(None);
    }
    let coordinator = args.coordinator.clone().ok_or_else(|| {
        CliError::Setting("--nodes > 1 needs --coordinator HOST:PORT (where rank 0 listens)".into())
    })?;
    if !(args.node_timeout.is_finite() && args.node_timeout > 0.0) {
        return Err(CliError::Setting(format!(
            "--node-timeout must be a positive number of seconds, not {}",
            args.node_timeout
        )));
    }
    let config = NodeConfig {
        nodes: args.nodes,
        rank: args.node_rank,
        coordinator,
        timeout: Duration::from_secs_f64(args.node_timeout),
    };
    config.validate()?;
    Ok(Some(config))
}

/// Whether the checkpoint at `start` has sharing adapters: only a run's checkpoint can (a GGUF
/// file or a Hugging Face directory has none).
fn has_sharing_adapters(start: &std::path::Path) -> Result<bool> {
    let dir = resolve_checkpoint(start)?;
    if !dir.join("state.json").is_file() {
        return Ok(false);
    }
    Ok(kv_routing_train::checkpoint::load_config(&dir)?
        .model
        .sharing_adapter
        .is_some())
}
