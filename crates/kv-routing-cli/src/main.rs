//! `kv-routing`: train routed transformers with stochastic KV routing, evaluate them under KV
//! sharing plans, and generate text. The backend is chosen at compile time (default: flex).
//!
//! One module per command (its options and what it does), plus what they share: resolving a
//! `--checkpoint` path, the inference device, the error type. Only `train` writes checkpoints;
//! the other commands only read (see [`checkpoint_path`]).

#![forbid(unsafe_code)]

mod checkpoint_path;
mod error;
mod eval_command;
mod export_command;
mod generate_command;
mod inference_device;
mod plan_command;
mod train_command;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::eval_command::{run_eval, EvalArgs};
use crate::export_command::{run_export, ExportArgs};
use crate::generate_command::{run_generate, GenerateArgs};
use crate::plan_command::{run_plan, PlanArgs};
use crate::train_command::{run_train, TrainArgs};

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
    Train(Box<TrainArgs>),
    /// Evaluate checkpoints under sharing plans: loss, recall accuracy, KV bytes, decode speed.
    Eval(EvalArgs),
    /// Generate text from a prompt with a checkpoint under a sharing plan.
    Generate(GenerateArgs),
    /// Write a checkpoint in Hugging Face layout (config.json + safetensors + tokenizer).
    Export(ExportArgs),
    /// Choose the layers to cache under a memory budget, calibrated on your text; prints the
    /// plan (layers:0,1,3,...) as its last line.
    Plan(PlanArgs),
}

fn main() -> ExitCode {
    // Errors are one line; a bug should be one line too, not a trace.
    std::panic::set_hook(Box::new(|info| eprintln!("internal error: {info}")));
    let cli = Cli::parse();
    // The program opts in to the backend's allocator policy before any tensor exists (on
    // flex: freed activations kept for reuse instead of faulted in again on every layer).
    kv_routing_backend::retain_freed_memory();
    let result = match cli.command {
        Command::Train(args) => run_train(*args),
        Command::Eval(args) => run_eval(args),
        Command::Generate(args) => run_generate(args),
        Command::Export(args) => run_export(args),
        Command::Plan(args) => run_plan(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
