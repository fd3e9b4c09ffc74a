//! What the main example measures: a trained model under several sharing plans, each against
//! the same model with its full cache — held-out loss, KV bytes, and how much of the greedy
//! continuation survives the sharing.
//!
//! Loss is measured on the validation split of the corpus the models were trained on (the
//! built-in synthetic corpus, seed 0), which training never saw. On the same text, at every
//! position, the greedy choice of the next byte under the plan is compared with the choice
//! under the full cache: the share that agree is how much of what greedy decoding writes the
//! plan leaves unchanged. (Comparing one free-running continuation instead would score a
//! single early flip between two equally likely words as a total loss: this corpus's grammar
//! draws its words uniformly, so such ties are everywhere.)

use burn::tensor::backend::Backend;
use indicatif::ProgressBar;
use kv_routing::{CachePlan, GenerationConfig};
use kv_routing_train::data::{DataSource, Dataset};
use kv_routing_train::evaluate::validation_metrics_and_predictions;
use kv_routing_train::pretrained::load_model_dir;
use kv_routing_train::{Result, TrainError};

use crate::bundled::{BundledModel, TRAINED_SEQ_LEN};

/// Prompts whose continuations are shown: sentences of the training corpus's grammar, cut off
/// mid-sentence so that the model has to finish them (a continuation ends with its sentence).
pub const PROMPTS: [&str; 3] = [
    "the quick fox sees a red bird.\nevery old ",
    "a lazy cat follows the green tree.\na ",
    "every bright boat passes a quiet house.\nthe small ",
];

/// What to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct ComparisonSettings {
    /// Plans as every-k-th layer cached (`1` is the full cache and must come first).
    pub every: Vec<usize>,
    /// Validation batches for the loss.
    pub batches: usize,
    /// Sequences per validation batch.
    pub batch_size: usize,
    /// Prompts to continue.
    pub prompts: Vec<String>,
    /// Greedy tokens (bytes) generated after each prompt at most.
    pub new_tokens: usize,
}

impl Default for ComparisonSettings {
    fn default() -> Self {
        Self {
            every: vec![1, 2, 3],
            batches: 8,
            batch_size: 16,
            prompts: PROMPTS.iter().map(|p| p.to_string()).collect(),
            new_tokens: 48,
        }
    }
}

/// One plan of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanOutcome {
    /// `full` or `every:K`.
    pub plan: String,
    /// Layers that keep a cache.
    pub cached_layers: Vec<usize>,
    /// Fraction of layers cached.
    pub retention: f64,
    /// KV cache bytes per token of one sequence, read from the cache manager.
    pub kv_bytes_per_token: usize,
    /// Held-out loss, nats per byte.
    pub loss: f64,
    /// Loss relative to the same model's full cache, in percent.
    pub loss_change_percent: f64,
    /// Share of held-out positions where the greedy next byte equals the full cache's (0..=1).
    pub same_as_full: f64,
    /// The continuation of each prompt.
    pub continuations: Vec<String>,
}

/// One model under every plan.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelOutcome {
    /// Which model.
    pub model: BundledModel,
    /// Decoder layers.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Optimizer steps it was trained for (from its `config.json`).
    pub trained_steps: u64,
    /// Routing probability it was trained with (from its `config.json`).
    pub trained_p: f64,
    /// In the order of [`ComparisonSettings::every`].
    pub plans: Vec<PlanOutcome>,
}

/// Loads `model` and measures it under every plan of `settings`; `progress` advances once per
/// plan.
pub fn compare_plans<B: Backend>(
    model: &BundledModel,
    settings: &ComparisonSettings,
    device: &B::Device,
    progress: &ProgressBar,
) -> Result<ModelOutcome> {
    if settings.every.first() != Some(&1) {
        return Err(TrainError::Config(
            "the first plan must be the full cache (every:1), the reference of the others".into(),
        ));
    }
    let loaded = load_model_dir::<B>(&model.dir(), device)?;
    let n_layers = loaded.model_config.n_layers;
    let dataset = Dataset::open(&DataSource::Synthetic { seed: 0 }, TRAINED_SEQ_LEN)?;
    let prompts = settings
        .prompts
        .iter()
        .map(|prompt| Ok(loaded.codec.encode(prompt)?))
        .collect::<Result<Vec<_>>>()?;
    let capacity = prompts.iter().map(Vec::len).max().unwrap_or(0) + settings.new_tokens;
    let generation = GenerationConfig {
        max_new_tokens: settings.new_tokens,
        stop_tokens: vec![u32::from(b'\n')],
        ..Default::default()
    };
    let mut plans: Vec<PlanOutcome> = Vec::new();
    // The full cache's loss and greedy predictions, the reference of every plan.
    let mut full: Option<(f64, Vec<i64>)> = None;
    for &k in &settings.every {
        progress.set_message(format!("{} every:{k}", model.name));
        let plan = CachePlan::every_kth(n_layers, k)?;
        let route = plan.route();
        let (metrics, greedy) = validation_metrics_and_predictions(
            &loaded.model,
            &dataset,
            &route,
            settings.batches,
            settings.batch_size,
        )?;
        let output = loaded.model.generate(&prompts, &route, &generation)?;
        let (full_loss, full_greedy) = full.get_or_insert_with(|| (metrics.loss, greedy.clone()));
        plans.push(PlanOutcome {
            plan: if k == 1 {
                "full".into()
            } else {
                format!("every:{k}")
            },
            cached_layers: plan.cached_layers().to_vec(),
            retention: plan.retention_fraction(),
            kv_bytes_per_token: output.kv_bytes() / (prompts.len() * capacity),
            loss: metrics.loss,
            loss_change_percent: (metrics.loss / *full_loss - 1.0) * 100.0,
            same_as_full: agreement(full_greedy, &greedy),
            continuations: output
                .tokens
                .iter()
                .map(|tokens| Ok(loaded.codec.decode(tokens)?.trim_end().to_string()))
                .collect::<Result<_>>()?,
        });
        progress.inc(1);
    }
    let routing = loaded
        .hf_config
        .as_ref()
        .and_then(|config| config.kv_routing.as_ref());
    Ok(ModelOutcome {
        model: *model,
        n_layers,
        d_model: loaded.model_config.d_model,
        trained_steps: routing.map_or(0, |r| r.routed_steps),
        trained_p: routing.map_or(0.0, |r| r.routing_p),
        plans,
    })
}

/// Share of positions where `candidate` equals `reference` (1 for no positions).
fn agreement(reference: &[i64], candidate: &[i64]) -> f64 {
    if reference.is_empty() {
        return 1.0;
    }
    let same = reference
        .iter()
        .zip(candidate)
        .filter(|(a, b)| a == b)
        .count();
    same as f64 / reference.len() as f64
}

#[cfg(test)]
mod tests {
    use super::agreement;

    #[test]
    fn agreement_counts_equal_positions() {
        assert_eq!(agreement(&[1, 2, 3, 4], &[1, 9, 3, 9]), 0.5);
        assert_eq!(agreement(&[1, 2], &[1, 2]), 1.0);
        assert_eq!(agreement(&[], &[]), 1.0);
    }
}
