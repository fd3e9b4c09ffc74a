//! `kv-routing generate`: text from a prompt with a checkpoint under a sharing plan.
//!
//! The request is checked against the model's context before anything runs
//! ([`check_context`]): a generation that cannot fit fails at once, not after decoding up to the
//! last position with every token thrown away. Only reads the checkpoint (see
//! [`crate::checkpoint_path`]).

use std::path::PathBuf;

use clap::Args;
use kv_routing::{CachePlan, GenerationConfig, KvDtype, MemoryBudget, Sampler};
use kv_routing_backend::{Backend, Precision, NAME};
use kv_routing_hf::{load_model_dir_with, WeightStorage};

use crate::checkpoint_path::resolve_checkpoint;
use crate::error::{CliError, Result};
use crate::inference_device::{inference_device, int8_prompts_setting};

/// The options of `kv-routing generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Checkpoint directory (a run directory or a Hugging Face checkpoint works too).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Prompt text; repeat for a batch (generated together, each continuation printed in turn).
    #[arg(long, required = true)]
    prompt: Vec<String>,
    /// Plan: full, every:K, retention:F, layers:0,3,5. Default: the plan stored with an
    /// exported model (kv_routing.serve_cached_layers), else full. One plan serves every
    /// prompt; as many plans as prompts give each prompt its own (in order), in one batch
    /// whose sequences each cache only their plan's layers.
    #[arg(long)]
    plan: Vec<String>,
    /// New tokens (bytes) at most. The prompt and these must fit the model's maximum sequence
    /// length (the last new token is not fed back: prompt + new tokens - 1 positions).
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
    /// Refuse a generation whose KV cache and prompt activations would exceed this much
    /// memory, before allocating: a size (8GiB, 512MB), `available` (what the system has free
    /// now) or `none`. On a GPU, give the device's memory.
    #[arg(long, default_value = "available")]
    memory_budget: MemoryBudget,
}

/// Runs `kv-routing generate`.
pub fn run_generate(args: GenerateArgs) -> Result<()> {
    let device = inference_device(args.dtype)?;
    let int8_prompts = int8_prompts_setting(args.weights, args.int8_prompts)?;
    let mut loaded = load_model_dir_with::<Backend>(
        &resolve_checkpoint(&args.checkpoint)?,
        args.weights,
        &device,
    )?;
    loaded.model = loaded
        .model
        .with_kv_dtype(args.kv_dtype)?
        .with_int8_prompt_products(int8_prompts);
    let n_layers = loaded.model_config.n_layers;
    let stored = loaded.stored_plan()?;
    let plans: Vec<(String, CachePlan)> = match args.plan.len() {
        0 => match stored {
            Some(stored) => vec![("stored with the model".to_string(), stored)],
            None => vec![("full".to_string(), CachePlan::full(n_layers)?)],
        },
        n if n == 1 || n == args.prompt.len() => args
            .plan
            .iter()
            .map(|spec| Ok((spec.clone(), CachePlan::parse(spec, n_layers)?)))
            .collect::<Result<_>>()?,
        n => {
            return Err(CliError::Setting(format!(
                "{n} plans for {} prompts: give one plan for all of them or one per prompt",
                args.prompt.len()
            )))
        }
    };
    // Sharing adapters merged into the weights when every plan of the run shares: the
    // decode step then costs what it costs without adapters (the full plan needs them apart).
    if loaded.model.sharing_adapter_rank().is_some()
        && plans.iter().all(|(_, plan)| plan.route().shares())
    {
        loaded.model = loaded.model.with_sharing_adapters_merged()?;
    }
    let mut prompts = Vec::with_capacity(args.prompt.len());
    for (i, text) in args.prompt.iter().enumerate() {
        let prompt = loaded.codec.encode(text)?;
        if prompt.is_empty() {
            return Err(CliError::Setting(format!("prompt {i} is empty")));
        }
        check_context(
            prompt.len(),
            args.max_new_tokens,
            loaded.model.max_seq_len(),
        )?;
        prompts.push(prompt);
    }
    let sampler = if args.temperature > 0.0 {
        Sampler::TopK {
            k: args.top_k,
            temperature: args.temperature,
        }
    } else {
        Sampler::Greedy
    };
    let config = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        sampler,
        seed: args.seed,
        stop_tokens: loaded.end_of_sequence_ids(),
        memory_budget: args.memory_budget,
    };
    let generation = if plans.len() == 1 {
        loaded
            .model
            .generate(&prompts, &plans[0].1.route(), &config)?
    } else {
        let routes: Vec<_> = plans.iter().map(|(_, plan)| plan.route()).collect();
        loaded.model.generate_mixed(&prompts, &routes, &config)?
    };
    for (i, (text, prompt)) in args.prompt.iter().zip(&prompts).enumerate() {
        if prompts.len() > 1 {
            let (name, plan) = &plans[i.min(plans.len() - 1)];
            println!(
                "--- prompt {i}, plan {name} (layers {:?}), {} bytes of KV cache",
                plan.cached_layers(),
                generation.kv_bytes_per_sequence[i]
            );
        }
        // Decoding the continuation alone would lose the space a tokenizer folds into its
        // first token; decode prompt + continuation and print what follows the decoded prompt.
        let prompt_text = loaded.codec.decode(prompt)?;
        let full_text = loaded
            .codec
            .decode(&[prompt.as_slice(), &generation.tokens[i]].concat())?;
        match full_text.strip_prefix(&prompt_text) {
            Some(continuation) => println!("{text}{continuation}"),
            None => println!("{full_text}"),
        }
    }
    let new_tokens: usize = generation.tokens.iter().map(Vec::len).sum();
    let prompt_tokens: usize = prompts.iter().map(Vec::len).sum();
    let decode_rate = match generation.decode_steps {
        0 => String::new(),
        steps if prompts.len() == 1 => format!(
            ", then {:.1} new tokens/s",
            steps as f64 / generation.decode_seconds
        ),
        steps => format!(
            ", then {:.1} decode steps/s for the batch of {}",
            steps as f64 / generation.decode_seconds,
            prompts.len()
        ),
    };
    let plan_note = match plans.as_slice() {
        [(name, plan)] => format!("plan {name} caching layers {:?}", plan.cached_layers()),
        _ => "a plan per prompt".to_string(),
    };
    eprintln!(
        "[{NAME} {}, {} tokens, {plan_note}: {} bytes of {} KV cache; \
         {prompt_tokens} prompt + {new_tokens} new tokens in {:.2} s: first token after {:.2} s{decode_rate}]",
        args.dtype.name(),
        loaded.codec.name(),
        generation.kv_bytes(),
        args.kv_dtype,
        generation.prefill_seconds + generation.decode_seconds,
        generation.prefill_seconds,
    );
    Ok(())
}

/// Checks that `prompt_tokens` and up to `max_new_tokens` new tokens fit a model of
/// `max_seq_len` positions. The model runs at every prompt position and at the position of
/// every new token but the last (which is picked, not fed back): `prompt + max_new_tokens - 1`
/// positions, or the prompt's alone when no token is asked for.
pub fn check_context(
    prompt_tokens: usize,
    max_new_tokens: usize,
    max_seq_len: usize,
) -> Result<()> {
    if prompt_tokens > max_seq_len {
        return Err(CliError::PromptTooLong {
            prompt_tokens,
            max_seq_len,
        });
    }
    let positions = prompt_tokens.saturating_add(max_new_tokens.saturating_sub(1));
    if positions > max_seq_len {
        return Err(CliError::ContextTooLong {
            prompt_tokens,
            max_new_tokens,
            positions,
            max_seq_len,
            allowed: max_seq_len - prompt_tokens + 1,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_context_holds_the_prompt_and_all_new_tokens_but_the_last() {
        assert!(check_context(14, 243, 256).is_ok());
        assert!(check_context(256, 1, 256).is_ok());
        assert!(check_context(256, 0, 256).is_ok());
        assert!(check_context(1, 256, 256).is_ok());
        match check_context(14, 244, 256) {
            Err(CliError::ContextTooLong {
                positions, allowed, ..
            }) => assert_eq!((positions, allowed), (257, 243)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            check_context(257, 0, 256),
            Err(CliError::PromptTooLong { .. })
        ));
        assert!(matches!(
            check_context(256, 2, 256),
            Err(CliError::ContextTooLong { allowed: 1, .. })
        ));
        // Absurd requests do not overflow.
        assert!(matches!(
            check_context(14, usize::MAX, 256),
            Err(CliError::ContextTooLong { .. })
        ));
    }
}
