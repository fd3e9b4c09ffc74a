//! `kv-routing plan`: the plan that fits a memory budget with the least damage on the user's
//! text ([`kv_routing::PlanCalibrationConfig`]). Prints the search's progress and, as the last
//! line of standard output, the plan in the `--plan` syntax (`layers:0,1,3,...`) for
//! `generate`, `eval` and `export`. Only reads the checkpoint (see [`crate::checkpoint_path`]).

use std::path::PathBuf;

use clap::{ArgGroup, Args};
use kv_routing::{CalibrationMeasure, PlanBudget, PlanCalibrationConfig, PlanSearch};
use kv_routing_backend::{Backend, Precision};
use kv_routing_hf::{load_model_dir, tokenizer_file};
use kv_routing_train::data::{DataSource, Dataset, Split};
use serde_json::json;

use crate::checkpoint_path::resolve_checkpoint;
use crate::error::{CliError, Result};
use crate::inference_device::inference_device;

/// The options of `kv-routing plan`.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("budget").required(true).args(["retention", "layers", "kv_bytes_per_token"])))]
pub struct PlanArgs {
    /// Checkpoint directory (a run directory or a Hugging Face checkpoint works too).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Calibration text (UTF-8, tokenized with the model's tokenizer): windows are drawn from
    /// its first 90%, seeded, like training samples. Keep it apart from the text you evaluate on.
    #[arg(long)]
    data: PathBuf,
    /// Budget: the share of layers to cache, in (0, 1] (as `retention:F` counts it).
    #[arg(long)]
    retention: Option<f64>,
    /// Budget: the number of layers to cache, layer 0 included.
    #[arg(long)]
    layers: Option<usize>,
    /// Budget: KV cache bytes per token of one sequence, in the --dtype's float type.
    #[arg(long)]
    kv_bytes_per_token: Option<usize>,
    /// Calibration windows (one of 512 tokens searches SmolLM2-135M down to 8 of its 30 layers
    /// in under 6 minutes on 2 CPU cores; the cost grows with the tokens).
    #[arg(long, default_value_t = 1)]
    sequences: usize,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// Seed of the windows' offsets.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Damage measure: kl (divergence from the full cache's predictions) or ce (cross-entropy).
    #[arg(long, default_value = "kl")]
    measure: CalibrationMeasure,
    /// Search: greedy, beam:W or one-shot.
    #[arg(long, default_value = "greedy")]
    search: PlanSearch,
    /// Windows run together in one forward pass.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Also write the search's figures here (JSON).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Precision of weights, activations and KV cache: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: Precision,
}

impl PlanArgs {
    fn budget(&self) -> Result<PlanBudget> {
        match (self.retention, self.layers, self.kv_bytes_per_token) {
            (Some(share), _, _) => Ok(PlanBudget::Retention(share)),
            (_, Some(layers), _) => Ok(PlanBudget::CachedLayers(layers)),
            (_, _, Some(bytes)) => Ok(PlanBudget::KvBytesPerToken(bytes)),
            (None, None, None) => Err(CliError::Setting(
                "give a budget: --retention, --layers or --kv-bytes-per-token".into(),
            )),
        }
    }
}

/// Runs `kv-routing plan`.
pub fn run_plan(args: PlanArgs) -> Result<()> {
    let device = inference_device(args.dtype)?;
    let loaded = load_model_dir::<Backend>(&resolve_checkpoint(&args.checkpoint)?, &device)?;
    let config = PlanCalibrationConfig::new(args.budget()?)
        .with_measure(args.measure)
        .with_search(args.search)
        .with_batch_size(args.batch_size);
    // The budget first: an impossible one fails before the text is read.
    let target = config.budget.cached_layers(&loaded.model)?;
    if args.sequences == 0 {
        return Err(CliError::Setting(
            "--sequences: calibration needs at least one window".into(),
        ));
    }
    let source = DataSource::TextFile {
        path: args.data.clone(),
        seed: args.seed,
        tokenizer: tokenizer_file(&loaded.dir),
    };
    let dataset = Dataset::open(&source, args.seq_len)?;
    let windows: Vec<Vec<u32>> = (0..args.sequences as u64)
        .map(|i| dataset.sample(Split::Train, i).tokens)
        .collect();
    let n_layers = loaded.model_config.n_layers;
    println!(
        "calibrating {target} of {n_layers} cached layers on {} windows of {} tokens ({}, {} search)",
        args.sequences,
        args.seq_len,
        match args.measure {
            CalibrationMeasure::FullCacheKl => "KL from the full cache",
            CalibrationMeasure::CrossEntropy => "cross-entropy",
        },
        args.search
    );
    let calibration = config.calibrate(&loaded.model, &windows, |progress| {
        println!(
            "{:>3} layers: {:.4} nats/token  {}  ({} candidates, {:.0} s)",
            progress.best.cached_layers().len(),
            progress.damage,
            progress.best.spec(),
            progress.candidates_evaluated,
            progress.seconds
        );
    })?;
    let kv_bytes = loaded.model.kv_bytes_per_token(&calibration.plan.route())?;
    let spec = calibration.plan.spec();
    if let Some(out) = &args.out {
        let report = json!({
            "plan": spec,
            "cached_layers": calibration.plan.cached_layers(),
            "kv_bytes_per_token": kv_bytes,
            "budget": config.budget,
            "checkpoint": args.checkpoint,
            "data": args.data,
            "sequences": args.sequences,
            "seq_len": args.seq_len,
            "seed": args.seed,
            "dtype": args.dtype.name(),
            "calibration": calibration,
        });
        let text = serde_json::to_string_pretty(&report).map_err(|e| CliError::io(out, e))?;
        std::fs::write(out, text).map_err(|e| CliError::io(out, e))?;
        println!("wrote {}", out.display());
    }
    println!(
        "{} layers, {kv_bytes} KV bytes per token, damage {:.4} nats/token; {} candidates, {} blocks run ({:.1} forward passes), {:.1} s",
        calibration.plan.cached_layers().len(),
        calibration.damage,
        calibration.candidates_evaluated,
        calibration.blocks_run,
        calibration.blocks_run as f64 / n_layers as f64,
        calibration.seconds
    );
    println!("{spec}");
    Ok(())
}
