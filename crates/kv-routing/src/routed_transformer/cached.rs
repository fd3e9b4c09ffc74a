//! The cached forward passes of a [`RoutedTransformer`]: prefill and decode through a
//! [`KvCacheManager`].
//!
//! # Contract
//! - A call appends each sequence's new tokens to the cache under the cache's route and
//!   returns their logits; it is all-or-nothing: on any error (a cache of another model's
//!   layout, an id outside the vocabulary, too many tokens) the cache is left as it was.
//! - Token ids come from the host and are checked there (see `tokens`).

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::RoutedTransformer;
use crate::error::KvRoutingError;
use crate::kv_cache::KvCacheManager;

impl<B: Backend> RoutedTransformer<B> {
    /// Cached forward: appends `tokens[b]` (zero or more new tokens of sequence `b`) to `cache`
    /// and returns the logits of every appended slot, under the cache's route.
    ///
    /// Prefill is one call with the prompts; decoding is one call per token. Sequences may bring
    /// different numbers of tokens; a step is all-or-nothing (see [`KvCacheManager`]).
    ///
    /// # Shapes
    /// - output: `[batch, max_new, vocab_size]`
    pub fn forward_cached(
        &self,
        tokens: &[Vec<u32>],
        cache: &mut KvCacheManager<B>,
    ) -> crate::Result<Tensor<B, 3>> {
        let hidden = self.hidden_cached(tokens, cache)?;
        Ok(self.vocab_logits(hidden))
    }

    /// Like [`RoutedTransformer::forward_cached`] but returns only the logits of each sequence's
    /// last new token, and projects only those onto the vocabulary. Rows of sequences that
    /// brought no token are meaningless.
    ///
    /// # Shapes
    /// - output: `[batch, vocab_size]`
    pub fn forward_cached_last(
        &self,
        tokens: &[Vec<u32>],
        cache: &mut KvCacheManager<B>,
    ) -> crate::Result<Tensor<B, 2>> {
        let hidden = self.hidden_cached(tokens, cache)?;
        Ok(self.last_token_logits(hidden, tokens))
    }

    /// The vocabulary logits of each sequence's last new token of a step's `hidden` output
    /// (`[batch, step_len, d_model]`), projecting only those rows, `[batch, vocab_size]`.
    pub(super) fn last_token_logits(
        &self,
        hidden: Tensor<B, 3>,
        tokens: &[Vec<u32>],
    ) -> Tensor<B, 2> {
        let [batch, step_len, d_model] = hidden.dims();
        let rows: Vec<i64> = tokens
            .iter()
            .enumerate()
            .map(|(b, t)| (b * step_len + t.len().saturating_sub(1)) as i64)
            .collect();
        let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [batch]), &self.device());
        let last = hidden.reshape([batch * step_len, d_model]).select(0, rows);
        self.vocab_logits(last)
    }

    /// The last blocks' output for the new tokens of one cached step, committed to `cache` only
    /// once every block has run.
    fn hidden_cached(
        &self,
        tokens: &[Vec<u32>],
        cache: &mut KvCacheManager<B>,
    ) -> crate::Result<Tensor<B, 3>> {
        self.check_cache_layout(cache)?;
        let new_tokens: Vec<usize> = tokens.iter().map(Vec::len).collect();
        let (ids, batch, step_len) = self.token_tensor(tokens)?;
        let mut step = cache.begin_step(&new_tokens, step_len)?;
        let rope = self.angles(step.positions(), batch, step_len)?;
        let mask = step.mask()?;
        let hidden = self.run_blocks(ids, &rope, &mask, &mut step)?;
        step.commit()?;
        Ok(hidden)
    }

    /// Refuses a cache laid out for another model.
    pub(super) fn check_cache_layout(&self, cache: &KvCacheManager<B>) -> crate::Result<()> {
        let layout = cache.layout();
        if layout.n_layers != self.n_layers()
            || layout.n_kv_heads != self.n_kv_heads()
            || layout.head_dim != self.head_dim()
        {
            return Err(KvRoutingError::ShapeMismatch {
                context: "cache layout (n_layers, n_kv_heads, head_dim) for this model".into(),
                expected: vec![self.n_layers(), self.n_kv_heads(), self.head_dim()],
                actual: vec![layout.n_layers, layout.n_kv_heads, layout.head_dim],
            });
        }
        Ok(())
    }
}
