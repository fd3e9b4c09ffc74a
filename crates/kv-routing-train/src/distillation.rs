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
//! - With `hidden_weight = h > 0`, a step whose route shares layers also adds, at every
//!   position, `h ·` [`hidden_state_distances`] between the student's hidden states under the
//!   step's route and the teacher's under the full plan, over the states between blocks.
//!   The final KL reaches a layer only through every layer above it; this term tells each
//!   layer directly what its reading of another layer's keys/values did to its output.
//! - With `position_focus = γ > 0`, a step whose route shares layers weights the KL term of
//!   each position by `w_i = l_i^γ / mean(l^γ)` over the batch ([`focused_losses`]), the
//!   weights taken as constants of the step: the term becomes `mean(l^(γ+1)) / mean(l^γ)` and
//!   its gradient `mean_i(w_i ∇l_i)`, pulled towards the positions where the shared path departs
//!   most from the teacher (retrieval's few answer tokens in a window of text the shared path
//!   already predicts).
//! - The teacher runs under the full plan on the inner (non-autodiff) backend: its logits are
//!   constants, its weights never receive a gradient, and the optimizer never sees them.

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
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
    /// On a step whose route shares layers, also pull the student's hidden states between
    /// blocks towards the teacher's with this weight ([`hidden_state_distances`]). `0` (the
    /// default, and what configurations without the field read as): logits only.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hidden_weight: f64,
    /// On a step whose route shares layers, weight each position's KL term by its own size to
    /// this power ([`focused_losses`]), in `[0, 4]`. `0` (the default, and what configurations
    /// without the field read as): every position alike.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub position_focus: f64,
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
            hidden_weight: 0.0,
            position_focus: 0.0,
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
        if !(self.hidden_weight >= 0.0 && self.hidden_weight.is_finite()) {
            return Err(TrainError::Config(format!(
                "the hidden-state weight of distillation must be finite and >= 0, got {}",
                self.hidden_weight
            )));
        }
        if !(0.0..=MAX_POSITION_FOCUS).contains(&self.position_focus) {
            return Err(TrainError::Config(format!(
                "the position focus of distillation must be in [0, {MAX_POSITION_FOCUS}], got {}",
                self.position_focus
            )));
        }
        Ok(())
    }
}

/// The largest position focus: beyond it a batch's loss is a handful of positions.
pub const MAX_POSITION_FOCUS: f64 = 4.0;

/// Each position's term `l_i` weighted by `w_i = l_i^γ / mean(l^γ)` (means over the batch), the
/// weights detached from the graph (constants of the step), for `focus = γ`. A negative `l_i`
/// (a KL rounded below zero) weighs 0; a batch whose terms are all 0 stays 0.
///
/// # Shapes
/// - losses: `[batch, seq_len]`
/// - output: `[batch, seq_len]`
pub fn focused_losses<B: Backend>(losses: Tensor<B, 2>, focus: f64) -> Tensor<B, 2> {
    let weights = losses.clone().detach().clamp_min(0.0).powf_scalar(focus);
    let mean = weights.clone().mean().clamp_min(1e-30).unsqueeze::<2>();
    losses.mul(weights.div(mean))
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

/// How far the student's hidden states are from the teacher's, per position: over the listed
/// states (one per layer boundary), the mean of `mean_d (s / rms(s) - t / rms(t))²`, with
/// `rms(x) = sqrt(mean_d x² + 1e-6)` over the `d_model` features of the position.
///
/// Each state is scaled to unit RMS first because that is what the next block sees (its
/// input goes through an RMS norm), and because the residual stream's scale grows with depth:
/// unscaled, the deepest layers would own the term. A position's value lies in `[0, 4]`.
/// Differentiable in `student`; `teacher` is taken as constant. Computed in f32 for
/// half-precision states.
///
/// # Shapes
/// - student, teacher: lists of equal length (at least one) of `[batch, seq_len, d_model]`
/// - output: `[batch, seq_len]`
pub fn hidden_state_distances<B: Backend>(
    student: &[Tensor<B, 3>],
    teacher: &[Tensor<B, 3>],
) -> Result<Tensor<B, 2>> {
    if student.is_empty() || student.len() != teacher.len() {
        return Err(TrainError::Config(format!(
            "hidden-state distillation needs as many teacher states as student states, and at least one (got {} and {})",
            student.len(),
            teacher.len()
        )));
    }
    let [batch, seq_len, d_model] = student[0].dims();
    let mut total: Option<Tensor<B, 3>> = None;
    for (layer, (s, t)) in student.iter().zip(teacher).enumerate() {
        if s.dims() != [batch, seq_len, d_model] || t.dims() != [batch, seq_len, d_model] {
            return Err(TrainError::Model(KvRoutingError::InvalidLengths(format!(
                "hidden state {layer}: student {:?} and teacher {:?}, expected {:?}",
                s.dims(),
                t.dims(),
                [batch, seq_len, d_model]
            ))));
        }
        let difference = unit_rms(in_f32(s.clone())) - unit_rms(in_f32(t.clone()).detach());
        let squared = difference.powi_scalar(2).mean_dim(2);
        total = Some(match total {
            Some(sum) => sum + squared,
            None => squared,
        });
    }
    let total = total.expect("at least one state, checked above");
    Ok(total
        .div_scalar(student.len() as f64)
        .reshape([batch, seq_len]))
}

/// `x / sqrt(mean_d x² + 1e-6)` along the last axis.
fn unit_rms<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    let rms = x.clone().powi_scalar(2).mean_dim(2).add_scalar(1e-6).sqrt();
    x.div(rms)
}

fn in_f32<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    match x.dtype() {
        DType::F16 | DType::BF16 => x.cast(DType::F32),
        _ => x,
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Tensor, TensorData};
    use burn_ndarray::NdArray;

    use super::{distillation_losses, hidden_state_distances, Distillation};

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
        settings.temperature = 2.0;
        for weight in [-0.5, f64::NAN, f64::INFINITY] {
            settings.hidden_weight = weight;
            assert!(settings.validate().is_err(), "hidden weight {weight}");
        }
        let state = |d: usize| vec![Tensor::<B, 3>::zeros([1, 2, d], &device)];
        assert!(hidden_state_distances(&state(3), &state(4)).is_err());
        assert!(hidden_state_distances(&state(3), &[]).is_err());
        assert!(hidden_state_distances::<B>(&[], &[]).is_err());
    }

    /// The hidden-state term against plain f64 loops over two layers of a [1, 2, 3] batch. In
    /// each layer, one position's student state is the teacher's scaled (distance 0 there: only
    /// the direction and relative size of the features count) and the other's is not.
    #[test]
    fn hidden_state_distances_match_a_direct_computation() {
        let device = Default::default();
        let student = [
            [[2.0, -4.0, 6.0], [1.0, 0.5, -2.0]],
            [[0.3, 0.1, -0.2], [5.0, 5.0, 5.0]],
        ];
        let teacher = [
            [[1.0, -2.0, 3.0], [0.0, 1.0, 1.0]],
            [[-0.3, 0.4, 0.9], [1.0, 1.0, 1.0]],
        ];
        let unit = |x: &[f64; 3]| {
            let rms = (x.iter().map(|v| v * v).sum::<f64>() / 3.0 + 1e-6).sqrt();
            x.map(|v| v / rms)
        };
        let expected: Vec<f64> = (0..2)
            .map(|position| {
                (0..2)
                    .map(|layer| {
                        let (s, t) = (
                            unit(&student[layer][position]),
                            unit(&teacher[layer][position]),
                        );
                        (0..3).map(|i| (s[i] - t[i]).powi(2)).sum::<f64>() / 3.0
                    })
                    .sum::<f64>()
                    / 2.0
            })
            .collect();
        let states = |values: [[[f64; 3]; 2]; 2]| -> Vec<Tensor<B, 3>> {
            values
                .iter()
                .map(|layer| {
                    let flat: Vec<f64> = layer.iter().flatten().copied().collect();
                    Tensor::from_data(TensorData::new(flat, [1, 2, 3]), &device)
                })
                .collect()
        };
        let got: Vec<f64> = hidden_state_distances(&states(student), &states(teacher))
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(got.len(), 2);
        for (g, e) in got.iter().zip(&expected) {
            assert!((g - e).abs() < 1e-12, "{got:?} against {expected:?}");
        }
        // Layer 1 position 1 is the teacher times 5, layer 0 position 0 the teacher times 2:
        // those contribute (almost) nothing, the others do.
        assert!(expected.iter().all(|&e| e > 0.01), "{expected:?}");
        let same = hidden_state_distances(&states(teacher), &states(teacher)).unwrap();
        assert_eq!(same.max().into_scalar(), 0.0);
    }
}
