//! `kv-routing export`: a checkpoint written in Hugging Face layout (`config.json` +
//! safetensors + tokenizer files), with its routing history and serving plan under
//! `kv_routing`. Reads its input without renaming it (see [`crate::checkpoint_path`]); writes
//! its output all or nothing.

use std::path::PathBuf;

use clap::Args;
use kv_routing::CachePlan;
use kv_routing_backend::{device, Backend};
use kv_routing_hf::{load_model_dir, ExportDtype, ExportOptions};

use crate::checkpoint_path::resolve_checkpoint;
use crate::error::Result;

/// The options of `kv-routing export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
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

/// Runs `kv-routing export`.
pub fn run_export(args: ExportArgs) -> Result<()> {
    let loaded = load_model_dir::<Backend>(&resolve_checkpoint(&args.checkpoint)?, &device())?;
    let plan = args
        .plan
        .as_deref()
        .map(|spec| CachePlan::parse(spec, loaded.model_config.n_layers))
        .transpose()?;
    let options = ExportOptions {
        dtype: args.dtype,
        max_shard_bytes: args.max_shard_mb.max(1) * 1_000_000,
        ..ExportOptions::default()
    };
    let config = loaded.export(&args.out, plan.as_ref(), options)?;
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
