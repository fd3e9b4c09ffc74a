//! Self-distillation: the student learns the frozen starting model's full-cache next-token
//! distribution instead of (or beside) the data's next token.
//!
//! Retrofitting routing into a pretrained model with plain cross-entropy pulls its full-cache
//! path towards the fine-tuning text and away from the model it was (docs/results.md: +25%
//! full-cache perplexity after 150 steps). With the teacher's distribution as the target the
//! full-cache path has nothing to unlearn (its loss is zero at the start), and the shared paths
//! learn to reproduce it. SwiftKV retrofits Llama-3.1 this way (temperature 2).
//!
//! # Contract
//! - The per-token loss is `T² · KL(softmax(t / T) ‖ softmax(s / T))`, summed over the
//!   vocabulary, for teacher logits `t`, student logits `s` and temperature `T`. The `T²` keeps
//!   the gradient's scale independent of `T` (its gradient in `s` is `T · (q - p)` at `T`), as in
//!   Hinton et al. (2015).
//! - With `ce_weight = w` the loss is `(1 - w) · KL-term + w · cross-entropy`.
//! - With `full_plan_weight = a > 0`, a step whose route shares layers adds `a ·` the KL term of
//!   the student's full-cache pass (the full plan's steps are unchanged).
//! - The teacher runs under the full plan on the inner (non-autodiff) backend: its logits are
//!   constants, its weights never receive a gradient, and the optimizer never sees them.

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use kv_routing::KvRoutingError;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// How a run distills from its frozen teacher. Saved in the run's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distillation {
    /// The teacher: a Hugging Face checkpoint directory, a GGUF file or a training run's
    /// checkpoint (absolute, so that a resumed run finds it again). Read, never written.
    pub teacher: PathBuf,
    /// Softmax temperature of both distributions (SwiftKV: 2).
    pub temperature: f64,
    /// Weight of the data's next-token cross-entropy, in `[0, 1]`; the KL term gets the rest.
    pub ce_weight: f64,
    /// On a step whose route shares layers, also distill the student's *full-cache* pass with
    /// this weight (`loss = shared + w · full`), so that every step pulls the full cache back to
    /// the teacher, not only the steps that draw the full plan. `0` (the default, and what
    /// configurations without the field read as): only the step's own route. Costs a second
    /// student pass on sharing steps.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub full_plan_weight: f64,
}

fn is_zero(weight: &f64) -> bool {
    *weight == 0.0
}

impl Distillation {
    /// The default recipe: temperature 2, pure KL.
    pub fn from_teacher(teacher: PathBuf) -> Self {
        Self {
            teacher,
            temperature: 2.0,
            ce_weight: 0.0,
            full_plan_weight: 0.0,
        }
    }

    /// Checks the temperature and the weight.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(TrainError::Config(format!(
                "the distillation temperature must be positive, got {}",
                self.temperature
            )));
        }
        if !(0.0..=1.0).contains(&self.ce_weight) {
            return Err(TrainError::Config(format!(
                "the cross-entropy weight of distillation must be in [0, 1], got {}",
                self.ce_weight
            )));
        }
        if !(self.full_plan_weight >= 0.0 && self.full_plan_weight.is_finite()) {
            return Err(TrainError::Config(format!(
                "the full-plan weight of distillation must be finite and >= 0, got {}",
                self.full_plan_weight
            )));
        }
        Ok(())
    }
}

/// The distillation term of every position: `T² · KL(softmax(t / T) ‖ softmax(s / T))`.
///
/// Differentiable in `student`; `teacher` is taken as constant (pass logits that carry no
/// graph). Half-precision logits are computed in f32, as the cross-entropy is.
///
/// # Shapes
/// - student: `[batch, seq_len, vocab]`
/// - teacher: `[batch, seq_len, vocab]`
/// - output: `[batch, seq_len]`
pub fn distillation_losses<B: Backend>(
    student: Tensor<B, 3>,
    teacher: Tensor<B, 3>,
    temperature: f64,
) -> std::result::Result<Tensor<B, 2>, KvRoutingError> {
    kv_routing::distillation_per_token(student, teacher, temperature)
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Tensor, TensorData};
    use burn_ndarray::NdArray;

    use super::{distillation_losses, Distillation};

    type B = NdArray<f64>;

    /// KL(p ‖ q) of two softmaxes at temperature `t`, in plain f64 loops.
    fn reference_kl(teacher: &[f64], student: &[f64], t: f64) -> f64 {
        let softmax = |logits: &[f64]| {
            let max = logits.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = logits.iter().map(|x| ((x - max) / t).exp()).collect();
            let z: f64 = e.iter().sum();
            e.into_iter().map(|x| x / z).collect::<Vec<_>>()
        };
        let (p, q) = (softmax(teacher), softmax(student));
        t * t * p.iter().zip(&q).map(|(p, q)| p * (p / q).ln()).sum::<f64>()
    }

    #[test]
    fn matches_the_kl_of_known_distributions() {
        // Teacher (1/2, 1/4, 1/4) against a uniform student: KL = 1/2 ln 1.5 + 1/2 ln 0.75.
        let teacher = [0.5f64.ln(), 0.25f64.ln(), 0.25f64.ln()];
        let student = [0.0, 0.0, 0.0];
        let by_hand = 0.5 * 1.5f64.ln() + 0.5 * 0.75f64.ln();
        let rows = [
            (teacher, student, 1.0, by_hand),
            ([1.0, -2.0, 0.5], [0.3, 0.1, -1.0], 2.0, f64::NAN),
            ([4.0, 0.0, -4.0], [4.0, 0.0, -4.0], 0.7, 0.0),
        ];
        for (teacher, student, t, expected) in rows {
            let expected = if expected.is_nan() {
                reference_kl(&teacher, &student, t)
            } else {
                expected
            };
            let device = Default::default();
            let tensor = |v: [f64; 3]| {
                Tensor::<B, 3>::from_data(TensorData::new(v.to_vec(), [1, 1, 3]), &device)
            };
            let kl: f64 = distillation_losses(tensor(student), tensor(teacher), t)
                .unwrap()
                .into_scalar();
            assert!(
                (kl - expected).abs() < 1e-12,
                "T = {t}: {kl} against {expected}"
            );
            assert!((reference_kl(&teacher, &student, t) - expected).abs() < 1e-12);
        }
    }

    #[test]
    fn shapes_and_settings_that_do_not_fit_are_errors() {
        let device = Default::default();
        let a = Tensor::<B, 3>::zeros([1, 2, 3], &device);
        assert!(distillation_losses(a.clone(), Tensor::zeros([1, 2, 4], &device), 1.0).is_err());
        for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(
                distillation_losses(a.clone(), a.clone(), t).is_err(),
                "T = {t}"
            );
        }
        let mut settings = Distillation::from_teacher("/m".into());
        settings.validate().unwrap();
        settings.ce_weight = 1.5;
        assert!(settings.validate().is_err());
        settings.ce_weight = 0.5;
        settings.temperature = 0.0;
        assert!(settings.validate().is_err());
    }
}
