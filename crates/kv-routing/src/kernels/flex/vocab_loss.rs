//! Per-token losses over the vocabulary on burn-flex's f32 logits, in one pass per row (feature
//! `flex`): the cross-entropy against target tokens and the distillation divergence from a
//! teacher's logits, for evaluation on `Flex` and, with their own backward pass, for training
//! on `Autodiff<Flex>`.
//!
//! # Why
//! With Burn's ops, `-log_softmax(logits).gather(targets)` builds four tensors the size of the
//! logits (shifted, exponentials, log-softmax, and in the backward pass the scattered one-hot
//! and the softmax), and the distillation term as many for each of student and teacher. At
//! SmolLM2's training shape (4 x 512 tokens, 49,152-token vocabulary) one is 400 MB: fresh
//! pages every time. Here a row of logits is read twice (maximum and sum, then the target or
//! the teacher's terms) and nothing of its size is allocated; the backward pass writes the
//! gradient into the logits' own buffer when nothing else holds it (it always is, in training:
//! the saved logits are the last reference once the graph has run this far).
//!
//! # Contract
//! [`cross_entropy`]: `lse(x_r) - x_r[target_r]` per row `r`, with its gradient
//! `g_r (softmax(x_r) - onehot(target_r))`. [`distillation`]: `T² KL(softmax(t_r / T) ‖
//! softmax(x_r / T))` per row, with its gradient in `x`, `g_r T (softmax(x_r / T) -
//! softmax(t_r / T))`; the teacher is a constant (no gradient). Both return `None` — Burn's ops
//! then run — for any backend but `Flex` and `Autodiff<Flex>` (default checkpointing), any
//! element type but f32, a target outside the vocabulary (the caller validates first), and
//! shapes that disagree. A non-finite logit makes its row's loss NaN, as Burn's softmax does.
//!
//! # Rounding
//! f32 with [`exp`] (relative error about 1e-7, arguments below -87.3 clamped: such a weight
//! is 1e-38 instead of smaller) and sums in eight lanes.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::softmax::max_keeping_nan_of;
use super::tensor::{
    contiguous_f32, contiguous_values as values, diff_float, flex_float, from_diff, from_flex,
    is_autodiff_flex,
};
use super::vector::{exp, has_avx2_fma_f16c};

/// Deliberate errors of the backward pass, switched on only by the tests and `kernel-mutants` builds ([`super::mutants`]): each
/// must fail the comparison with Burn's ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(any(test, feature = "kernel-mutants")), allow(dead_code))]
enum Mutation {
    /// The cross-entropy's gradient without the `-g` at the target.
    TargetNotSubtracted,
    /// The distillation gradient without its factor `T`.
    TemperatureFactorMissing,
}

#[cfg_attr(not(any(test, feature = "kernel-mutants")), allow(dead_code))]
impl Mutation {
    const ALL: [Mutation; 2] = [
        Mutation::TargetNotSubtracted,
        Mutation::TemperatureFactorMissing,
    ];
}

#[cfg(test)]
thread_local! {
    /// Backward passes run from this thread that wrote into the logits' own buffer.
    static IN_PLACE_WRITES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The mutation in force ([`super::mutants`]), read on the thread that runs the backward pass.
fn current_mutation() -> Option<Mutation> {
    super::mutants::active("vocab_loss", &Mutation::ALL)
}

/// Independent partial sums of a row's reductions.
const LANES: usize = 8;

/// Cross-entropy of every row of `logits` `[batch, seq_len, vocab]` against `targets`
/// (`batch * seq_len` tokens, row-major), `[batch, seq_len]`; `None` for Burn's ops.
pub(crate) fn cross_entropy<B: Backend>(
    logits: &Tensor<B, 3>,
    targets: &[u32],
) -> Option<Tensor<B, 2>> {
    let [batch, seq_len, vocab] = logits.dims();
    if targets.len() != batch * seq_len || targets.iter().any(|&t| t as usize >= vocab) {
        return None;
    }
    let loss = Loss::CrossEntropy(targets.to_vec().into());
    run(logits, None, loss)
}

/// `T² KL(softmax(teacher / T) ‖ softmax(student / T))` of every row, `[batch, seq_len]`;
/// `None` for Burn's ops.
pub(crate) fn distillation<B: Backend>(
    student: &Tensor<B, 3>,
    teacher: &Tensor<B, 3>,
    temperature: f64,
) -> Option<Tensor<B, 2>> {
    if student.dims() != teacher.dims() || !(temperature > 0.0 && temperature.is_finite()) {
        return None;
    }
    run(
        student,
        Some(teacher),
        Loss::Distillation(temperature as f32),
    )
}

/// Which loss, with what it needs beyond the logits.
#[derive(Clone, Debug)]
enum Loss {
    CrossEntropy(std::sync::Arc<[u32]>),
    Distillation(f32),
}

fn run<B: Backend>(
    logits: &Tensor<B, 3>,
    teacher: Option<&Tensor<B, 3>>,
    loss: Loss,
) -> Option<Tensor<B, 2>> {
    let [batch, seq_len, vocab] = logits.dims();
    let shape = Shape::from(vec![batch, seq_len]);
    if let Some(logits) = flex_float(logits) {
        let teacher = match teacher {
            Some(teacher) => Some(f32_rows(flex_float(teacher)?)?),
            None => None,
        };
        let (losses, _) = forward(&f32_rows(logits)?, teacher.as_ref(), vocab, &loss);
        return from_flex(FlexTensor::from_data(burn::tensor::TensorData::new(
            losses, shape,
        )));
    }
    if !is_autodiff_flex::<B>() {
        return None;
    }
    let student = diff_float(logits)?;
    let node = student.node.clone();
    // Made contiguous if it was not: the rows the forward pass reads and the backward one saves.
    let student_rows = f32_rows(student.primitive)?;
    // The teacher is a constant: its values only, whatever graph it carries.
    let teacher = match teacher {
        Some(teacher) => Some(f32_rows(diff_float(teacher)?.primitive)?),
        None => None,
    };
    let (losses, log_sum_exps) = forward(&student_rows, teacher.as_ref(), vocab, &loss);
    let losses = FlexTensor::from_data(burn::tensor::TensorData::new(losses, shape));
    let output = match VocabLossBackward
        .prepare::<NoCheckpointing>([node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            // The only handle this operation keeps: once the graph's other holders are gone,
            // the backward pass finds the buffer unshared and writes the gradient into it.
            prep.finish(
                SavedLoss {
                    logits: student_rows,
                    teacher,
                    log_sum_exps: log_sum_exps.into(),
                    loss,
                },
                losses,
            )
        }
        OpsKind::UnTracked(prep) => prep.finish(losses),
    };
    from_diff(output)
}

/// `tensor` when it is f32 and its values are one contiguous run of its buffer (rows of the
/// last axis back to back), made so when it is f32 and laid out otherwise.
fn f32_rows(tensor: FlexTensor) -> Option<FlexTensor> {
    if tensor.dtype() != DType::F32 {
        return None;
    }
    if tensor.as_slice::<f32>().is_some() {
        Some(tensor)
    } else {
        Some(tensor.to_contiguous())
    }
}

/// Every row's loss and log-sum-exp (of `x`, or of `x / T` for distillation).
fn forward(
    logits: &FlexTensor,
    teacher: Option<&FlexTensor>,
    vocab: usize,
    loss: &Loss,
) -> (Vec<f32>, Vec<f32>) {
    let rows = values(logits);
    let mut losses = vec![0.0f32; rows.len() / vocab];
    let mut log_sum_exps = vec![0.0f32; losses.len()];
    let teacher_rows = teacher.map(values);
    losses
        .par_iter_mut()
        .zip(log_sum_exps.par_iter_mut())
        .enumerate()
        .for_each(|(r, (loss_out, lse_out))| {
            let row = &rows[r * vocab..][..vocab];
            let (value, lse) = match (loss, teacher_rows) {
                (Loss::CrossEntropy(targets), _) => {
                    let lse = log_sum_exp(row, 1.0);
                    (lse - row[targets[r] as usize], lse)
                }
                (Loss::Distillation(temperature), Some(teacher)) => {
                    let teacher = &teacher[r * vocab..][..vocab];
                    let lse = log_sum_exp(row, 1.0 / temperature);
                    (divergence(row, teacher, lse, *temperature), lse)
                }
                (Loss::Distillation(_), None) => unreachable!("distillation has a teacher"),
            };
            *loss_out = value;
            *lse_out = lse;
        });
    (losses, log_sum_exps)
}

/// `ln Σ exp(scale x_j)`, NaN for a row with a NaN or +inf.
fn log_sum_exp(row: &[f32], scale: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma_f16c() {
        // SAFETY: the CPU has the features the function is compiled for (checked above).
        return unsafe { log_sum_exp_avx2(row, scale) };
    }
    log_sum_exp_portable(row, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn log_sum_exp_avx2(row: &[f32], scale: f32) -> f32 {
    log_sum_exp_portable(row, scale)
}

#[inline(always)]
fn log_sum_exp_portable(row: &[f32], scale: f32) -> f32 {
    // A NaN logit must make the row NaN.
    let max = max_keeping_nan_of(row);
    if !max.is_finite() {
        return f32::NAN;
    }
    let shift = max * scale;
    let mut sums = [0.0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (s, &x) in sums.iter_mut().zip(chunk) {
            *s += exp(x * scale - shift);
        }
    }
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|&x| exp(x * scale - shift))
        .sum();
    shift + (sums.iter().sum::<f32>() + tail).ln()
}

/// `T² KL(p ‖ q)` for `p = softmax(t / T)`, `q = softmax(x / T)`, given `ln Σ exp(x / T)`:
/// `T² (Σ p_j (t_j - x_j) / T - lse(t / T) + lse(x / T))`.
fn divergence(student: &[f32], teacher: &[f32], student_lse: f32, temperature: f32) -> f32 {
    let inverse = 1.0 / temperature;
    let teacher_lse = log_sum_exp(teacher, inverse);
    let weighted = weighted_difference(student, teacher, teacher_lse, inverse);
    temperature * temperature * (weighted - teacher_lse + student_lse)
}

/// `Σ exp(t_j / T - lse_t) (t_j - x_j) / T`.
fn weighted_difference(student: &[f32], teacher: &[f32], teacher_lse: f32, inverse: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma_f16c() {
        // SAFETY: the CPU has the features the function is compiled for (checked above).
        return unsafe { weighted_difference_avx2(student, teacher, teacher_lse, inverse) };
    }
    weighted_difference_portable(student, teacher, teacher_lse, inverse)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn weighted_difference_avx2(
    student: &[f32],
    teacher: &[f32],
    teacher_lse: f32,
    inverse: f32,
) -> f32 {
    weighted_difference_portable(student, teacher, teacher_lse, inverse)
}

#[inline(always)]
fn weighted_difference_portable(
    student: &[f32],
    teacher: &[f32],
    teacher_lse: f32,
    inverse: f32,
) -> f32 {
    let mut sums = [0.0f32; LANES];
    let mut pairs = student.chunks_exact(LANES).zip(teacher.chunks_exact(LANES));
    for (x, t) in &mut pairs {
        for lane in 0..LANES {
            let p = exp(t[lane] * inverse - teacher_lse);
            sums[lane] += p * (t[lane] - x[lane]) * inverse;
        }
    }
    let done = student.len() / LANES * LANES;
    let tail: f32 = student[done..]
        .iter()
        .zip(&teacher[done..])
        .map(|(&x, &t)| exp(t * inverse - teacher_lse) * (t - x) * inverse)
        .sum();
    sums.iter().sum::<f32>() + tail
}

/// What the backward pass reads: the logits (the graph's handle), the teacher's, each row's
/// log-sum-exp, and the loss.
#[derive(Clone, Debug)]
struct SavedLoss {
    logits: FlexTensor,
    teacher: Option<FlexTensor>,
    log_sum_exps: std::sync::Arc<[f32]>,
    loss: Loss,
}

#[derive(Debug)]
struct VocabLossBackward;

impl Backward<Flex, 1> for VocabLossBackward {
    type State = SavedLoss;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad_losses = grads.consume::<Flex>(&ops.node);
        let [logits_node] = ops.parents;
        if let Some(node) = logits_node {
            grads.register::<Flex>(node.id, backward(ops.state, grad_losses));
        }
    }
}

/// The gradient of the logits for the losses' gradient `grad_losses` `[batch, seq_len]`.
fn backward(saved: SavedLoss, grad_losses: FlexTensor) -> FlexTensor {
    let mutation = current_mutation();
    let grad_losses = contiguous_f32(grad_losses);
    let grad_losses = values(&grad_losses);
    let SavedLoss {
        mut logits,
        teacher,
        log_sum_exps,
        loss,
    } = saved;
    let shape = logits.layout().shape().clone();
    let vocab = shape[shape.num_dims() - 1];
    // In place when the logits' buffer is ours alone and holds exactly these values.
    let whole_buffer = logits.layout().contiguous_offsets() == Some((0, shape.num_elements()))
        && logits.bytes().len() == shape.num_elements() * 4;
    let mut fresh = None;
    let gradient: &mut [f32] = match (whole_buffer, logits.try_storage_mut::<f32>()) {
        (true, Some(buffer)) => {
            #[cfg(test)]
            IN_PLACE_WRITES.with(|count| count.set(count.get() + 1));
            buffer
        }
        _ => {
            let copy = fresh.insert(FlexTensor::from_data(burn::tensor::TensorData::new(
                values(&logits).to_vec(),
                shape.clone(),
            )));
            copy.storage_mut::<f32>()
        }
    };
    let teacher_rows = teacher.as_ref().map(values);
    gradient
        .par_chunks_mut(vocab)
        .enumerate()
        .for_each(|(r, row)| {
            let (g, lse) = (grad_losses[r], log_sum_exps[r]);
            match (&loss, teacher_rows) {
                (Loss::CrossEntropy(targets), _) => {
                    softmax_minus(row, None, 1.0, lse, g);
                    if mutation != Some(Mutation::TargetNotSubtracted) {
                        row[targets[r] as usize] -= g;
                    }
                }
                (Loss::Distillation(temperature), Some(teacher)) => {
                    let teacher = &teacher[r * vocab..][..vocab];
                    let inverse = 1.0 / temperature;
                    let teacher_lse = log_sum_exp(teacher, inverse);
                    softmax_minus(
                        row,
                        Some((teacher, teacher_lse)),
                        inverse,
                        lse,
                        if mutation == Some(Mutation::TemperatureFactorMissing) {
                            g
                        } else {
                            g * temperature
                        },
                    );
                }
                (Loss::Distillation(_), None) => unreachable!("distillation has a teacher"),
            }
        });
    fresh.unwrap_or(logits)
}

/// `row` (logits `x`) becomes `g (exp(x s - lse) - exp(t s - lse_t))` with `s` the inverse
/// temperature, the teacher's term only when there is one.
fn softmax_minus(row: &mut [f32], teacher: Option<(&[f32], f32)>, scale: f32, lse: f32, g: f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma_f16c() {
        // SAFETY: the CPU has the features the function is compiled for (checked above).
        return unsafe { softmax_minus_avx2(row, teacher, scale, lse, g) };
    }
    softmax_minus_portable(row, teacher, scale, lse, g)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn softmax_minus_avx2(
    row: &mut [f32],
    teacher: Option<(&[f32], f32)>,
    scale: f32,
    lse: f32,
    g: f32,
) {
    softmax_minus_portable(row, teacher, scale, lse, g)
}

#[inline(always)]
fn softmax_minus_portable(
    row: &mut [f32],
    teacher: Option<(&[f32], f32)>,
    scale: f32,
    lse: f32,
    g: f32,
) {
    match teacher {
        None => {
            for x in row.iter_mut() {
                *x = g * exp(*x * scale - lse);
            }
        }
        Some((teacher, teacher_lse)) => {
            for (x, &t) in row.iter_mut().zip(teacher) {
                *x = g * (exp(*x * scale - lse) - exp(t * scale - teacher_lse));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::flex::tensor::{all_close, Diff};
    use burn::tensor::{Distribution, TensorData};

    const TEMPERATURE: f64 = 2.0;

    /// The losses with Burn's ops (the generic fallback's formulas), `[batch, seq_len]`.
    fn generic_cross_entropy<B: Backend>(logits: Tensor<B, 3>, targets: &[u32]) -> Tensor<B, 2> {
        let [batch, seq_len, _] = logits.dims();
        let ids: Vec<i64> = targets.iter().map(|&t| t as i64).collect();
        let ids = Tensor::<B, 3, burn::tensor::Int>::from_data(
            TensorData::new(ids, [batch, seq_len, 1]),
            &logits.device(),
        );
        burn::tensor::activation::log_softmax(logits, 2)
            .gather(2, ids)
            .reshape([batch, seq_len])
            .neg()
    }

    fn generic_distillation<B: Backend>(
        student: Tensor<B, 3>,
        teacher: Tensor<B, 3>,
    ) -> Tensor<B, 2> {
        let [batch, seq_len, _] = student.dims();
        let log_student = burn::tensor::activation::log_softmax(student.div_scalar(TEMPERATURE), 2);
        let log_teacher = burn::tensor::activation::log_softmax(teacher.div_scalar(TEMPERATURE), 2);
        log_teacher
            .clone()
            .exp()
            .mul(log_teacher.sub(log_student))
            .sum_dim(2)
            .reshape([batch, seq_len])
            .mul_scalar(TEMPERATURE * TEMPERATURE)
    }

    /// `[cross-entropy, distillation, d_logits]` of `Σ (ce + kl) ⊙ w` on the same logits, by the
    /// kernels (f32) when `kernel`, by Burn's ops in f64 otherwise. The logits are shared by
    /// both losses, so the first backward pass must not write into them.
    fn losses_and_gradient(
        [logits, teacher]: [Tensor<Flex, 3>; 2],
        weights: Tensor<Flex, 2>,
        kernel: bool,
        logits_are_a_view: bool,
    ) -> [Vec<f64>; 3] {
        let [batch, seq_len, vocab] = logits.dims();
        let targets: Vec<u32> = (0..batch * seq_len)
            .map(|i| (i * 389 % vocab) as u32)
            .collect();
        let wide = |t: Tensor<Flex, 3>| if kernel { t } else { t.cast(DType::F64) };
        let leaf = Tensor::<Diff, 3>::from_inner(wide(logits)).require_grad();
        // A non-contiguous view of the same values, as a transposed product could hand over.
        // The logits as an operation's output that nothing but the graph holds, as in training
        // (so that the second backward pass can write in place), or a non-contiguous view.
        let student = if logits_are_a_view {
            leaf.clone()
                .swap_dims(0, 1)
                .reshape([seq_len, batch, vocab])
                .swap_dims(0, 1)
        } else {
            leaf.clone().mul_scalar(1.0)
        };
        let teacher = Tensor::<Diff, 3>::from_inner(wide(teacher));
        let (ce, kl) = if kernel {
            // Moved in, so that it is dropped before the backward pass.
            let student = student;
            (
                cross_entropy(&student, &targets).expect("f32 on Autodiff<Flex>"),
                distillation(&student, &teacher, TEMPERATURE).expect("f32 on Autodiff<Flex>"),
            )
        } else {
            (
                generic_cross_entropy(student.clone(), &targets),
                generic_distillation(student, teacher),
            )
        };
        let w = Tensor::<Diff, 2>::from_inner(if kernel {
            weights
        } else {
            weights.cast(DType::F64)
        });
        let grads = ((ce.clone() + kl.clone()) * w).sum().backward();
        let host2 = |t: Tensor<Flex, 2>| t.into_data().iter::<f64>().collect::<Vec<_>>();
        [
            host2(ce.inner()),
            host2(kl.inner()),
            leaf.grad(&grads)
                .expect("a gradient")
                .into_data()
                .iter::<f64>()
                .collect(),
        ]
    }

    fn compare(logits_are_a_view: bool) -> Result<(), String> {
        let device = Default::default();
        let (batch, seq_len, vocab) = (2, 5, 1003);
        let random = || {
            Tensor::<Flex, 3>::random(
                [batch, seq_len, vocab],
                Distribution::Normal(0.0, 3.0),
                &device,
            )
        };
        let logits = [random(), random()];
        let weights =
            Tensor::<Flex, 2>::random([batch, seq_len], Distribution::Normal(1.0, 1.0), &device);
        let kernel = losses_and_gradient(logits.clone(), weights.clone(), true, logits_are_a_view);
        let reference = losses_and_gradient(logits, weights, false, logits_are_a_view);
        all_close(
            &["cross-entropy", "distillation", "gradient"],
            &kernel,
            &reference,
            2e-5,
        )
    }

    #[test]
    fn losses_and_gradients_match_burns_generic_ops_in_f64() {
        let before = IN_PLACE_WRITES.with(std::cell::Cell::get);
        compare(false).unwrap();
        // Of the two losses sharing the logits, the first to run its backward pass copied and
        // the second wrote into the buffer it then held alone.
        assert_eq!(IN_PLACE_WRITES.with(std::cell::Cell::get), before + 1);
        compare(true).unwrap();
    }

    #[test]
    fn every_mutation_of_the_backward_pass_is_caught() {
        let survivors =
            super::super::mutants::surviving("vocab_loss", &Mutation::ALL, || compare(false));
        assert!(survivors.is_empty(), "{survivors:?} passed the comparison");
    }

    #[test]
    fn evaluation_on_plain_flex_matches_and_others_are_left_to_burn() {
        let device = Default::default();
        let logits = Tensor::<Flex, 3>::random([3, 4, 77], Distribution::Normal(0.0, 2.0), &device);
        let targets: Vec<u32> = (0..12).map(|i| i * 5).collect();
        let got: Vec<f64> = cross_entropy(&logits, &targets)
            .unwrap()
            .into_data()
            .iter()
            .collect();
        let want: Vec<f64> = generic_cross_entropy(logits.clone().cast(DType::F64), &targets)
            .into_data()
            .iter()
            .collect();
        for (a, e) in got.iter().zip(&want) {
            assert!((a - e).abs() < 1e-5, "{a} against {e}");
        }
        // A NaN logit makes its row's loss NaN, as Burn's softmax does; other rows are unaffected.
        let mut values: Vec<f32> = logits.to_data().to_vec().unwrap();
        values[5] = f32::NAN;
        let poisoned = Tensor::<Flex, 3>::from_data(TensorData::new(values, [3, 4, 77]), &device);
        let losses: Vec<f32> = cross_entropy(&poisoned, &targets)
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap();
        assert!(losses[0].is_nan() && losses[1..].iter().all(|x| x.is_finite()));
        // A target outside the vocabulary, f64, mismatched shapes: Burn's ops (and the caller's
        // validation) decide.
        assert!(cross_entropy(&logits, &[77; 12]).is_none());
        assert!(cross_entropy(&logits.clone().cast(DType::F64), &targets).is_none());
        assert!(distillation(&logits, &logits.clone().narrow(0, 0, 2), 2.0).is_none());
    }
}
