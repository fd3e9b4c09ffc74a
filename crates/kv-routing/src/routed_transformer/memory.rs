//! What a forward pass and a KV cache of a [`RoutedTransformer`] take in bytes, computed from
//! shapes alone.
//!
//! # Contract
//! Nothing here allocates or touches the device beyond reading its float type: the figures are
//! what callers check against a [`MemoryBudget`](crate::MemoryBudget) *before* running a batch
//! or allocating a cache. Overflow is `None` (or an error), never a wrapped figure.

use burn::tensor::backend::Backend;

use super::RoutedTransformer;
use crate::kv_cache::KvCacheLayout;
use crate::memory_budget::checked_product;
use crate::route::Route;

impl<B: Backend> RoutedTransformer<B> {
    /// A lower bound on the bytes of the activations a forward pass over `batch` sequences of
    /// `seq_len` tokens holds at once (`None` if it overflows `u128`), in the device's float
    /// type: a block's input and output hidden states and the logits; in `training`, the
    /// hidden state every layer keeps for the backward pass and the logits' gradient too. What
    /// attention scores and feed-forward intermediates take comes on top. Checked against a
    /// [`MemoryBudget`](crate::MemoryBudget) before a batch is run.
    pub fn min_forward_bytes(&self, batch: usize, seq_len: usize, training: bool) -> Option<u128> {
        let (d, v) = (self.d_model() as u128, self.vocab_size() as u128);
        let per_token = if training {
            (self.n_layers() as u128)
                .checked_mul(d)?
                .checked_add(v.checked_mul(2)?)?
        } else {
            d.checked_mul(2)?.checked_add(v)?
        };
        checked_product(&[batch, seq_len, self.float_bytes()])?.checked_mul(per_token)
    }

    /// Bytes of one element of the device's float type (what activations and the KV cache use).
    pub fn float_bytes(&self) -> usize {
        burn::tensor::DType::from(
            burn::tensor::get_device_settings::<B>(&self.device()).float_dtype,
        )
        .size()
    }

    /// KV cache bytes per token of one sequence under `route`, in the format this model's
    /// caches take on its device ([`RoutedTransformer::kv_dtype`]; computed, nothing
    /// allocated).
    pub fn kv_bytes_per_token(&self, route: &Route) -> crate::Result<usize> {
        route.check_layers(self.n_layers())?;
        let layout = KvCacheLayout {
            batch_size: 1,
            n_layers: self.n_layers(),
            n_kv_heads: self.n_kv_heads(),
            head_dim: self.head_dim(),
            capacity: 1,
        };
        Ok(layout.bytes_for(route, self.kv_row_format()?))
    }
}
