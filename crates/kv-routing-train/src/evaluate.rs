//! Evaluation of a trained model under sharing plans: validation loss and perplexity, recall
//! accuracy, passkey retrieval, KV bytes per token, decode throughput.

use burn::tensor::backend::Backend;
use kv_routing::{CachePlan, GenerationConfig, Route, RoutedTransformer, Sampler};
use serde::{Deserialize, Serialize};

use crate::data::{Dataset, Split};
use crate::error::Result;
use crate::loss::token_losses;
use crate::passkey::{passkey_score, PasskeyScore, PasskeyTask};
use crate::tokenizer::TextCodec;

/// Quality of a model under one route on the validation split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValidationMetrics {
    /// Mean next-token cross-entropy (nats).
    pub loss: f64,
    /// Fraction of recall answers predicted exactly (argmax), when the data has recall queries.
    pub recall_accuracy: Option<f64>,
}

/// Validation loss and recall accuracy over `batches` batches of `batch_size` under `route`.
pub fn validation_metrics<B: Backend>(
    model: &RoutedTransformer<B>,
    dataset: &Dataset,
    route: &Route,
    batches: usize,
    batch_size: usize,
) -> Result<ValidationMetrics> {
    Ok(validation_metrics_and_predictions(model, dataset, route, batches, batch_size)?.0)
}

/// [`validation_metrics`], together with the greedy (argmax) prediction of the next token at
/// every position, batch after batch, row-major (read back anyway for the recall accuracy):
/// comparing two routes' predictions says how much of what greedy decoding writes one of them
/// changes.
pub fn validation_metrics_and_predictions<B: Backend>(
    model: &RoutedTransformer<B>,
    dataset: &Dataset,
    route: &Route,
    batches: usize,
    batch_size: usize,
) -> Result<(ValidationMetrics, Vec<i64>)> {
    let (mut loss_sum, mut tokens) = (0.0, 0usize);
    let (mut correct, mut answers) = (0usize, 0usize);
    let mut all_predictions = Vec::new();
    for b in 0..batches {
        let batch = dataset.batch(Split::Validation, (b * batch_size) as u64, batch_size);
        let logits = model.forward_tokens(&batch.inputs, route)?;
        let predictions: Vec<i64> = logits.clone().argmax(2).into_data().iter::<i64>().collect();
        let losses: Vec<f64> = token_losses(logits, &batch.targets)?
            .into_data()
            .iter::<f64>()
            .collect();
        loss_sum += losses.iter().sum::<f64>();
        tokens += losses.len();
        let targets = batch.targets.iter().flatten();
        let recall = batch.recall.iter().flatten();
        for ((&prediction, &target), &is_answer) in predictions.iter().zip(targets).zip(recall) {
            if is_answer {
                answers += 1;
                correct += usize::from(prediction == i64::from(target));
            }
        }
        all_predictions.extend(predictions);
    }
    let metrics = ValidationMetrics {
        loss: loss_sum / tokens.max(1) as f64,
        recall_accuracy: (dataset.has_recall() && answers > 0)
            .then(|| correct as f64 / answers as f64),
    };
    Ok((metrics, all_predictions))
}

/// Settings of [`evaluate_plans`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalSettings {
    /// Validation batches per plan.
    pub batches: usize,
    /// Sequences per validation batch.
    pub batch_size: usize,
    /// Sequences decoded together in the throughput measurement.
    pub decode_batch: usize,
    /// Tokens decoded (after a prefill of half the context) in the throughput measurement.
    pub decode_tokens: usize,
    /// The passkey retrieval task, if it is run (text models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passkey: Option<PasskeyTask>,
}

impl Default for EvalSettings {
    fn default() -> Self {
        Self {
            batches: 16,
            batch_size: 16,
            decode_batch: 4,
            decode_tokens: 32,
            passkey: None,
        }
    }
}

/// The result of one plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanReport {
    /// The plan as it was named (`every:2`).
    pub plan: String,
    /// Cached layers.
    pub cached_layers: Vec<usize>,
    /// Fraction of layers cached.
    pub retention: f64,
    /// Validation loss (nats per token).
    pub val_loss: f64,
    /// `exp(val_loss)`.
    pub perplexity: f64,
    /// Recall accuracy, when the data has recall queries.
    pub recall_accuracy: Option<f64>,
    /// Passkey retrieval, when the settings ask for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passkey: Option<PasskeyScore>,
    /// KV cache bytes per token of one sequence, measured from the cache manager.
    pub kv_bytes_per_token: usize,
    /// Greedy decode throughput, tokens per second.
    pub decode_tokens_per_second: f64,
}

/// Evaluates `model` under each named plan; `codec` turns the passkey prompts into tokens.
pub fn evaluate_plans<B: Backend>(
    model: &RoutedTransformer<B>,
    codec: &TextCodec,
    dataset: &Dataset,
    plans: &[(String, CachePlan)],
    settings: &EvalSettings,
) -> Result<Vec<PlanReport>> {
    let passkey = settings
        .passkey
        .map(|task| task.tokenize(codec, model.max_seq_len()))
        .transpose()?;
    // Sharing plans are evaluated as they are served: with the sharing adapters merged into
    // the weights (one copy of the projections for all of them), the full plan on the model
    // as it is.
    let merged = match model.sharing_adapter_rank() {
        Some(_) if plans.iter().any(|(_, plan)| plan.route().shares()) => {
            Some(model.clone().with_sharing_adapters_merged()?)
        }
        _ => None,
    };
    plans
        .iter()
        .map(|(name, plan)| {
            let route = plan.route();
            let model = match &merged {
                Some(merged) if route.shares() => merged,
                _ => model,
            };
            let metrics = validation_metrics(
                model,
                dataset,
                &route,
                settings.batches,
                settings.batch_size,
            )?;
            let passkey = passkey
                .as_ref()
                .map(|task| passkey_score(model, codec, &route, task, settings.decode_batch))
                .transpose()?;
            let kv_bytes_per_token = model.kv_bytes_per_token(&route)?;
            Ok(PlanReport {
                plan: name.clone(),
                cached_layers: plan.cached_layers().to_vec(),
                retention: plan.retention_fraction(),
                val_loss: metrics.loss,
                perplexity: metrics.loss.exp(),
                recall_accuracy: metrics.recall_accuracy,
                passkey,
                kv_bytes_per_token,
                decode_tokens_per_second: decode_throughput(model, dataset, &route, settings)?,
            })
        })
        .collect()
}

/// Greedy decode tokens per second after a prefill of half the context (prefill not timed).
pub fn decode_throughput<B: Backend>(
    model: &RoutedTransformer<B>,
    dataset: &Dataset,
    route: &Route,
    settings: &EvalSettings,
) -> Result<f64> {
    let prompt_len = (dataset.seq_len() / 2).max(1);
    let prompts: Vec<Vec<u32>> = (0..settings.decode_batch as u64)
        .map(|i| dataset.sample(Split::Validation, i).tokens[..prompt_len].to_vec())
        .collect();
    // The generation loop itself, greedy, never stopping early: the first pick ends the
    // (untimed) prefill, then `decode_tokens` timed steps follow.
    let generation = model.generate(
        &prompts,
        route,
        &GenerationConfig {
            max_new_tokens: settings.decode_tokens + 1,
            sampler: Sampler::Greedy,
            ..GenerationConfig::default()
        },
    )?;
    if generation.decode_steps == 0 {
        return Ok(0.0);
    }
    Ok((prompts.len() * generation.decode_steps) as f64 / generation.decode_seconds)
}
