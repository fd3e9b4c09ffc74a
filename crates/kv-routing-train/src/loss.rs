//! Next-token cross-entropy over a batch, with the per-position values evaluation needs.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};

/// Negative log-likelihood of every target: `[batch, seq_len]`.
///
/// # Shapes
/// - logits: `[batch, seq_len, vocab]`
/// - targets: `batch` rows of `seq_len` token ids
pub fn token_losses<B: Backend>(logits: Tensor<B, 3>, targets: &[Vec<u32>]) -> Tensor<B, 2> {
    let [batch, seq_len, _] = logits.dims();
    // Half-precision logits lose the small log-probabilities of a large vocabulary.
    let logits = match logits.dtype() {
        DType::F16 | DType::BF16 => logits.cast(DType::F32),
        _ => logits,
    };
    let ids: Vec<i64> = targets.iter().flatten().map(|&t| t as i64).collect();
    let ids =
        Tensor::<B, 3, Int>::from_data(TensorData::new(ids, [batch, seq_len, 1]), &logits.device());
    log_softmax(logits, 2)
        .gather(2, ids)
        .reshape([batch, seq_len])
        .neg()
}

/// Mean next-token cross-entropy (a scalar tensor, differentiable).
pub fn mean_loss<B: Backend>(logits: Tensor<B, 3>, targets: &[Vec<u32>]) -> Tensor<B, 1> {
    token_losses(logits, targets).mean()
}
