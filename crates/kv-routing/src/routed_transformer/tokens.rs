//! Token ids against the vocabulary of a [`RoutedTransformer`].
//!
//! # Contract
//! - Ids that come from the host are checked on the host, before anything is uploaded: an id
//!   outside `0..vocab_size` is [`KvRoutingError::TokenOutOfRange`] naming the first such id
//!   (sequences in order, positions in order). A host check is a loop over ids the caller
//!   already holds; it never waits on the device.
//! - Ids that are already on the device are never read back to be checked: a read-back is a
//!   synchronization with the device on every forward pass, i.e. on every training step. They
//!   are checked where they are built, on the host ([`RoutedTransformer::check_tokens`];
//!   Burn's `Learner` pipeline checks its data once before the first step). An id outside the
//!   vocabulary that reaches the device anyway is never gathered out of bounds: every
//!   embedding, hence every logit, of its sequence becomes NaN, which a loss or a divergence
//!   check sees, and the other sequences of the batch are computed as without it.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::RoutedTransformer;
use crate::error::KvRoutingError;

/// Token ids on the device, with what is known about them.
pub(super) enum DeviceTokens<B: Backend> {
    /// Uploaded by [`RoutedTransformer::token_tensor`] after the host check: all in range.
    Checked(Tensor<B, 2, Int>),
    /// Handed in on the device by the caller: possibly out of range, and never read back.
    Unchecked(Tensor<B, 2, Int>),
}

impl<B: Backend> RoutedTransformer<B> {
    /// Checks host token lists against the vocabulary, on the host: the check to run where ids
    /// are built before they go to the device as a tensor for [`RoutedTransformer::forward`]
    /// (which does not read them back). The host-list paths (`forward_tokens`, the cached
    /// forwards) run it themselves.
    ///
    /// # Errors
    /// [`KvRoutingError::TokenOutOfRange`] for the first id `>= vocab_size`.
    pub fn check_tokens(&self, tokens: &[Vec<u32>]) -> crate::Result<()> {
        check_tokens(tokens, self.vocab_size)
    }

    /// Checks host token lists ([`RoutedTransformer::check_tokens`]) and uploads them
    /// right-padded (with id 0) as `[batch, max_len]`; returns `(ids, batch, max_len)`.
    pub(super) fn token_tensor(
        &self,
        tokens: &[Vec<u32>],
    ) -> crate::Result<(DeviceTokens<B>, usize, usize)> {
        let batch = tokens.len();
        let seq_len = tokens.iter().map(Vec::len).max().unwrap_or(0);
        if batch == 0 || seq_len == 0 {
            return Err(KvRoutingError::InvalidLengths(format!(
                "need at least one sequence and one token (got {batch} sequences of at most {seq_len} tokens)"
            )));
        }
        self.check_tokens(tokens)?;
        let mut ids = vec![0i64; batch * seq_len];
        for (row, sequence_tokens) in ids.chunks_exact_mut(seq_len).zip(tokens) {
            for (id, &token) in row.iter_mut().zip(sequence_tokens) {
                *id = token as i64;
            }
        }
        let ids = Tensor::from_data(TensorData::new(ids, [batch, seq_len]), &self.device());
        Ok((DeviceTokens::Checked(ids), batch, seq_len))
    }

    /// The token embeddings of `tokens`, `[batch, seq_len, d_model]`. Unchecked ids are
    /// clamped into the vocabulary for the gather and the sequences holding one are set to NaN
    /// (see the module contract), all on the device.
    pub(super) fn embed(&self, tokens: DeviceTokens<B>) -> Tensor<B, 3> {
        let ids = match tokens {
            DeviceTokens::Checked(ids) => return self.embedding.forward(ids),
            DeviceTokens::Unchecked(ids) => ids,
        };
        let [batch, seq_len] = ids.dims();
        let last = self.vocab_size as i64 - 1;
        let gathered = ids.clone().clamp(0, last);
        // An id changed by the clamp was outside the vocabulary.
        let poisoned = gathered.clone().not_equal(ids).any_dim(1);
        let embedded = self.embedding.forward(gathered);
        let mask = poisoned
            .unsqueeze_dim::<3>(2)
            .expand([batch, seq_len, self.d_model()]);
        embedded.mask_fill(mask, f32::NAN)
    }
}

/// [`RoutedTransformer::check_tokens`] for a vocabulary of `vocab_size` ids.
fn check_tokens(tokens: &[Vec<u32>], vocab_size: usize) -> crate::Result<()> {
    for (sequence, sequence_tokens) in tokens.iter().enumerate() {
        if let Some(position) = sequence_tokens
            .iter()
            .position(|&token| token as usize >= vocab_size)
        {
            return Err(KvRoutingError::TokenOutOfRange {
                token: sequence_tokens[position],
                sequence,
                position,
                vocab_size,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_tokens;
    use crate::KvRoutingError;

    #[test]
    fn host_ids_outside_the_vocabulary_are_typed_errors_naming_the_first() {
        assert_eq!(check_tokens(&[vec![0, 10], vec![3]], 11), Ok(()));
        assert_eq!(check_tokens(&[], 11), Ok(()));
        assert_eq!(
            check_tokens(&[vec![0, 1], vec![2, 11, 12], vec![99]], 11),
            Err(KvRoutingError::TokenOutOfRange {
                token: 11,
                sequence: 1,
                position: 1,
                vocab_size: 11
            })
        );
        assert_eq!(
            check_tokens(&[vec![u32::MAX]], 11),
            Err(KvRoutingError::TokenOutOfRange {
                token: u32::MAX,
                sequence: 0,
                position: 0,
                vocab_size: 11
            })
        );
    }
}
