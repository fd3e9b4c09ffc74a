//! Next-token cross-entropy over a batch, with the per-position values evaluation needs.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use kv_routing::KvRoutingError;

/// Negative log-likelihood of every target: `[batch, seq_len]`.
///
/// Targets that do not match the logits (a row count or row length other than the logits',
/// a token id outside the vocabulary) are an error, checked on the host before anything runs.
///
/// # Shapes
/// - logits: `[batch, seq_len, vocab]`
/// - targets: `batch` rows of `seq_len` token ids, each `< vocab`
/// - output: `[batch, seq_len]`
pub fn token_losses<B: Backend>(
    logits: Tensor<B, 3>,
    targets: &[Vec<u32>],
) -> Result<Tensor<B, 2>, KvRoutingError> {
    let [batch, seq_len, vocab] = logits.dims();
    if targets.len() != batch {
        return Err(KvRoutingError::InvalidLengths(format!(
            "{} rows of targets for logits of batch {batch}",
            targets.len()
        )));
    }
    if let Some((row, targets)) = targets.iter().enumerate().find(|(_, t)| t.len() != seq_len) {
        return Err(KvRoutingError::InvalidLengths(format!(
            "target row {row} has {} tokens, the logits have {seq_len} positions",
            targets.len()
        )));
    }
    for (sequence, row) in targets.iter().enumerate() {
        if let Some((position, &token)) = row.iter().enumerate().find(|(_, &t)| t as usize >= vocab)
        {
            return Err(KvRoutingError::TokenOutOfRange {
                token,
                sequence,
                position,
                vocab_size: vocab,
            });
        }
    }
    // Computed in f32 for half-precision logits, by the backend's kernel where it has one.
    let targets: Vec<u32> = targets.iter().flatten().copied().collect();
    kv_routing::cross_entropy_per_token(logits, &targets)
}

/// Mean next-token cross-entropy (a one-element tensor, differentiable); the targets are
/// checked as [`token_losses`] checks them.
///
/// # Shapes
/// - logits: `[batch, seq_len, vocab]`
/// - output: `[1]`
pub fn mean_loss<B: Backend>(
    logits: Tensor<B, 3>,
    targets: &[Vec<u32>],
) -> Result<Tensor<B, 1>, KvRoutingError> {
    Ok(token_losses(logits, targets)?.mean())
}

#[cfg(test)]
mod tests {
    use burn::tensor::Tensor;
    use burn_ndarray::NdArray;
    use kv_routing::KvRoutingError;

    use super::token_losses;

    #[test]
    fn targets_that_do_not_fit_the_logits_are_errors() {
        let logits = Tensor::<NdArray<f32>, 3>::zeros([2, 3, 5], &Default::default());
        let ok = token_losses(logits.clone(), &[vec![0, 1, 4], vec![2, 3, 0]]).unwrap();
        // Uniform logits: every target costs ln 5.
        let value: f32 = ok.mean().into_scalar();
        assert!((value - 5f32.ln()).abs() < 1e-6);
        for (targets, what) in [
            (vec![vec![0, 1, 4]], "a row short"),
            (vec![vec![0, 1, 4], vec![2, 3]], "ragged"),
            (vec![vec![0, 1, 4], vec![2, 3, 0, 1]], "a row too long"),
        ] {
            assert!(
                matches!(
                    token_losses(logits.clone(), &targets),
                    Err(KvRoutingError::InvalidLengths(_))
                ),
                "{what}"
            );
        }
        assert!(matches!(
            token_losses(logits, &[vec![0, 1, 4], vec![2, 5, 0]]),
            Err(KvRoutingError::TokenOutOfRange {
                token: 5,
                sequence: 1,
                position: 1,
                vocab_size: 5
            })
        ));
    }
}
