//! Per-token losses over the vocabulary: the cross-entropy against the next tokens and the
//! distillation divergence from a teacher's logits.
//!
//! Both are computed by a backend kernel where one exists — burn-flex, and `Autodiff<Flex>`
//! with its own backward pass (`kernels::flex::vocab_loss`: no tensor the size of the logits
//! is allocated besides their gradient) — and by Burn's ops otherwise, with the same results
//! to f32 rounding. Half-precision logits are computed in f32.
//!
//! # Contract
//! - [`cross_entropy_per_token`]: `-log softmax(logits)[target]` per position.
//! - [`distillation_per_token`]: `T² · KL(softmax(teacher / T) ‖ softmax(student / T))` per
//!   position, differentiable in `student`; `teacher` is a constant (its graph, if any, is not
//!   followed).
//!
//! Both validate their inputs (shapes, token range, temperature) and return a typed error
//! before any tensor is read.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};

use crate::error::KvRoutingError;

/// The cross-entropy of every position against its target token.
///
/// # Shapes
/// - logits: `[batch, seq_len, vocab]`
/// - targets: `batch * seq_len` tokens, row-major
/// - output: `[batch, seq_len]`
pub fn cross_entropy_per_token<B: Backend>(
    logits: Tensor<B, 3>,
    targets: &[u32],
) -> crate::Result<Tensor<B, 2>> {
    let [batch, seq_len, vocab] = logits.dims();
    if targets.len() != batch * seq_len {
        return Err(KvRoutingError::InvalidLengths(format!(
            "{} targets for logits of {batch} x {seq_len} positions",
            targets.len()
        )));
    }
    if let Some((at, &token)) = targets
        .iter()
        .enumerate()
        .find(|(_, &t)| t as usize >= vocab)
    {
        return Err(KvRoutingError::TokenOutOfRange {
            token,
            sequence: at / seq_len.max(1),
            position: at % seq_len.max(1),
            vocab_size: vocab,
        });
    }
    let logits = in_f32(logits);
    if let Some(losses) = crate::kernels::cross_entropy(&logits, targets) {
        return Ok(losses);
    }
    let ids: Vec<i64> = targets.iter().map(|&t| t as i64).collect();
    let ids =
        Tensor::<B, 3, Int>::from_data(TensorData::new(ids, [batch, seq_len, 1]), &logits.device());
    Ok(log_softmax(logits, 2)
        .gather(2, ids)
        .reshape([batch, seq_len])
        .neg())
}

/// The distillation term of every position: `T² · KL(softmax(t / T) ‖ softmax(s / T))`.
///
/// # Shapes
/// - student: `[batch, seq_len, vocab]`
/// - teacher: `[batch, seq_len, vocab]`
/// - output: `[batch, seq_len]`
pub fn distillation_per_token<B: Backend>(
    student: Tensor<B, 3>,
    teacher: Tensor<B, 3>,
    temperature: f64,
) -> crate::Result<Tensor<B, 2>> {
    let [batch, seq_len, vocab] = student.dims();
    if teacher.dims() != [batch, seq_len, vocab] {
        return Err(KvRoutingError::InvalidLengths(format!(
            "teacher logits of shape {:?} for student logits of shape {:?}",
            teacher.dims(),
            [batch, seq_len, vocab]
        )));
    }
    if !(temperature > 0.0 && temperature.is_finite()) {
        return Err(KvRoutingError::InvalidConfig(format!(
            "the distillation temperature must be positive, got {temperature}"
        )));
    }
    let (student, teacher) = (in_f32(student), in_f32(teacher).detach());
    if let Some(losses) = crate::kernels::distillation(&student, &teacher, temperature) {
        return Ok(losses);
    }
    let inverse = 1.0 / temperature;
    let student = log_softmax(student.mul_scalar(inverse), 2);
    let teacher = log_softmax(teacher.mul_scalar(inverse), 2);
    let kl = teacher
        .clone()
        .exp()
        .mul(teacher.sub(student))
        .sum_dim(2)
        .reshape([batch, seq_len]);
    Ok(kl.mul_scalar(temperature * temperature))
}

/// Half-precision logits widened to f32 (a softmax over 49k values in f16 loses the target).
fn in_f32<B: Backend>(logits: Tensor<B, 3>) -> Tensor<B, 3> {
    match logits.dtype() {
        DType::F16 | DType::BF16 => logits.cast(DType::F32),
        _ => logits,
    }
}
