//! `kv-routing eval`: checkpoints under sharing plans — loss, recall accuracy, passkey
//! retrieval, KV bytes, decode speed — as a table, and optionally `eval.json` and a
//! quality-versus-memory plot. Only reads the checkpoints (see [`crate::checkpoint_path`]).

use std::path::PathBuf;

use clap::Args;
use kv_routing::{split_plan_list, CachePlan, KvDtype};
use kv_routing_backend::{Backend, Precision, NAME};
use kv_routing_hf::{load_model_dir_with, tokenizer_file, WeightStorage};
use kv_routing_train::checkpoint::load_config;
use kv_routing_train::data::{DataSource, Dataset};
use kv_routing_train::evaluate::{evaluate_plans, EvalSettings};
use kv_routing_train::passkey::PasskeyTask;
use kv_routing_train::plot::quality_vs_memory_svg;
use kv_routing_train::report::{format_table, ModelEvaluation};

use crate::checkpoint_path::{resolve_checkpoint, run_name};
use crate::error::{CliError, Result};
use crate::inference_device::{inference_device, int8_prompts_setting};

/// The options of `kv-routing eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
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
    /// Comma-separated plans: full, every:K, retention:F, layers:0,3,5 (the form `kv-routing
    /// plan` prints: `--plans full,every:2,layers:0,1,3`).
    #[arg(long, default_value = "full,every:2,every:3,every:4")]
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
    /// What the KV cache stores: native (the --dtype), f32, f16, bf16, or int8 (8-bit codes
    /// with one scale per 32 values, llama.cpp's q8_0 layout).
    #[arg(long, default_value = "native")]
    kv_dtype: KvDtype,
    /// What the weight matrices are held as: float (the --dtype, default), as-stored (a GGUF
    /// file's q8_0 and q4_1 matrices kept as the file stores them: 8.5 and 5 bits a value,
    /// multiplied in place on flex), q8_0 or q4_1 (every matrix in that format, quantized at
    /// load where the file does not store it so).
    #[arg(long, default_value = "float")]
    weights: WeightStorage,
    /// Multiply a prompt's rows with Q8_0 and Q4_1 weights as 8-bit integers, as llama.cpp does
    /// (with --weights as-stored, q8_0 or q4_1; on flex, CPUs with AVX2 or AVX-512 VNNI):
    /// faster prompts, but results move by the rounding of the rows (SmolLM2: perplexity
    /// +0.3-0.4%, and greedy text can differ from the float path's).
    #[arg(long)]
    int8_prompts: bool,
}

/// Runs `kv-routing eval`.
pub fn run_eval(args: EvalArgs) -> Result<()> {
    let device = inference_device(args.dtype)?;
    let int8_prompts = int8_prompts_setting(args.weights, args.int8_prompts)?;
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
        let mut loaded =
            load_model_dir_with::<Backend>(&resolve_checkpoint(path)?, args.weights, &device)?;
        loaded.model = loaded
            .model
            .with_kv_dtype(args.kv_dtype)?
            .with_int8_prompt_products(int8_prompts);
        let plans = split_plan_list(&args.plans)
            .into_iter()
            .map(|spec| {
                let plan = CachePlan::parse(&spec, loaded.model_config.n_layers)?;
                Ok((spec, plan))
            })
            .collect::<Result<Vec<_>>>()?;
        // A run is evaluated on its own data and sequence length unless told otherwise: the
        // training crate's full configuration of the checkpoint (the loader reads only its
        // model half).
        let run = match loaded.run {
            Some(_) => Some(load_config(&loaded.dir)?),
            None => None,
        };
        let tokenizer = tokenizer_file(&loaded.dir);
        let (data, seq_len) = match (&args.data, &run) {
            (Some(file), run) => (
                DataSource::TextFile {
                    path: file.clone(),
                    seed: 0,
                    tokenizer: tokenizer.clone(),
                },
                run.as_ref().map_or(args.seq_len, |r| r.seq_len),
            ),
            (None, Some(run)) => (run.data.clone(), run.seq_len),
            (None, None) => (DataSource::Synthetic { seed: 0 }, args.seq_len),
        };
        let dataset = match &args.heldout {
            Some(text) => Dataset::open_heldout(text, tokenizer.as_deref(), args.seq_len)?,
            None => Dataset::open(&data, seq_len)?,
        };
        let history = loaded.routing_history();
        evaluations.push(ModelEvaluation {
            name: run_name(path),
            checkpoint: loaded.dir.clone(),
            p: history.routing_p,
            steps: history.routed_steps,
            backend: match args.kv_dtype {
                KvDtype::Native => format!("{NAME} {}", args.dtype.name()),
                kv => format!("{NAME} {}, KV {kv}", args.dtype.name()),
            },
            settings,
            plans: evaluate_plans(&loaded.model, &loaded.codec, &dataset, &plans, &settings)?,
        });
    }
    print!("{}", format_table(&evaluations));
    if let Some(out) = args.out {
        std::fs::create_dir_all(&out).map_err(|e| CliError::io(&out, e))?;
        let json_path = out.join("eval.json");
        let json =
            serde_json::to_string_pretty(&evaluations).map_err(|e| CliError::io(&json_path, e))?;
        std::fs::write(&json_path, json).map_err(|e| CliError::io(&json_path, e))?;
        let svg_path = out.join("quality_vs_memory.svg");
        std::fs::write(&svg_path, quality_vs_memory_svg(&evaluations))
            .map_err(|e| CliError::io(&svg_path, e))?;
        println!("wrote {} and {}", json_path.display(), svg_path.display());
    }
    Ok(())
}
