//! Evaluation results as a terminal table and as JSON.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::evaluate::{EvalSettings, PlanReport};

/// One model evaluated under several plans.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelEvaluation {
    /// Short name (the checkpoint's run directory).
    pub name: String,
    /// The checkpoint evaluated.
    pub checkpoint: PathBuf,
    /// Routing probability it was trained with.
    pub p: f64,
    /// Steps it was trained for.
    pub steps: u64,
    /// Backend that ran the evaluation.
    pub backend: String,
    /// Evaluation settings.
    pub settings: EvalSettings,
    /// One entry per plan, in the order given.
    pub plans: Vec<PlanReport>,
}

/// A plain-text table of every model and plan; `Δ loss` is relative to the model's first plan.
pub fn format_table(evaluations: &[ModelEvaluation]) -> String {
    let mut out = format!(
        "{:<16} {:<16} {:>10} {:>9} {:>8} {:>8} {:>8} {:>8} {:>11}\n",
        "model", "plan", "KV B/tok", "val loss", "ppl", "Δ loss", "recall", "passkey", "decode t/s"
    );
    for evaluation in evaluations {
        let reference = evaluation
            .plans
            .first()
            .map(|p| p.val_loss)
            .unwrap_or(f64::NAN);
        for plan in &evaluation.plans {
            let percent = |fraction: Option<f64>| {
                fraction
                    .map(|r| format!("{:.1}%", r * 100.0))
                    .unwrap_or_else(|| "-".into())
            };
            out.push_str(&format!(
                "{:<16} {:<16} {:>10} {:>9.4} {:>8.3} {:>+7.1}% {:>8} {:>8} {:>11.1}\n",
                evaluation.name,
                plan.plan,
                plan.kv_bytes_per_token,
                plan.val_loss,
                plan.perplexity,
                100.0 * (plan.val_loss - reference) / reference,
                percent(plan.recall_accuracy),
                percent(plan.passkey.map(|p| p.accuracy)),
                plan.decode_tokens_per_second
            ));
        }
    }
    out
}
