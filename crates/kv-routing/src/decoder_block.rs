//! [`DecoderBlock`]: a pre-norm Llama block whose attention is routed.

use burn::module::Module;
use burn::nn::RmsNorm;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::attention::StochasticKvAttention;
use crate::attention_mask::AttentionMask;
use crate::error::Result;
use crate::feed_forward::SwiGluFeedForward;
use crate::kv_store::KvStore;
use crate::rms_norm::rms_norm;
use crate::rope::RopeAngles;

/// `x + attn(norm(x))`, then `x + mlp(norm(x))`.
#[derive(Module, Debug)]
pub struct DecoderBlock<B: Backend> {
    /// Norm before attention.
    pub attention_norm: RmsNorm<B>,
    /// Routed attention.
    pub attention: StochasticKvAttention<B>,
    /// Norm before the feed-forward block.
    pub mlp_norm: RmsNorm<B>,
    /// Feed-forward block.
    pub mlp: SwiGluFeedForward<B>,
}

impl<B: Backend> DecoderBlock<B> {
    /// Runs block `layer` under the store's route: computes and hands over its own keys/values
    /// only when it is a source, then attends to those of its source layer.
    ///
    /// # Shapes
    /// - x: `[batch, seq_len, d_model]`
    /// - output: `[batch, seq_len, d_model]`
    pub fn forward(
        &self,
        layer: usize,
        x: Tensor<B, 3>,
        rope: &RopeAngles<B>,
        mask: &AttentionMask<B>,
        store: &mut impl KvStore<B>,
    ) -> Result<Tensor<B, 3>> {
        let normed = rms_norm(&self.attention_norm, x.clone());
        let x = x + self.attention.forward(layer, normed, rope, mask, store)?;
        Ok(x.clone() + self.mlp.forward(rms_norm(&self.mlp_norm, x)))
    }

    /// [`DecoderBlock::forward`] for a batch whose consecutive row ranges are groups with
    /// stores (routes), rotary angles and masks of their own: attention runs once per group
    /// on its rows, the feed-forward block once on the whole batch.
    ///
    /// # Shapes
    /// - x: `[batch, seq_len, d_model]`, the groups' rows in order, covering the batch
    /// - output: `[batch, seq_len, d_model]`
    pub fn forward_grouped<S: KvStore<B>>(
        &self,
        layer: usize,
        x: Tensor<B, 3>,
        groups: &mut [BlockGroup<'_, B, S>],
    ) -> Result<Tensor<B, 3>> {
        let [_, seq_len, d_model] = x.dims();
        let normed = rms_norm(&self.attention_norm, x.clone());
        let attended = groups
            .iter_mut()
            .map(|group| {
                let rows = normed
                    .clone()
                    .slice([group.rows.clone(), 0..seq_len, 0..d_model]);
                self.attention
                    .forward(layer, rows, group.rope, group.mask, group.store)
            })
            .collect::<Result<Vec<_>>>()?;
        let x = x + Tensor::cat(attended, 0);
        Ok(x.clone() + self.mlp.forward(rms_norm(&self.mlp_norm, x)))
    }
}

/// One group of a batch's rows for [`DecoderBlock::forward_grouped`].
pub struct BlockGroup<'a, B: Backend, S> {
    /// The group's rows of the batch.
    pub rows: std::ops::Range<usize>,
    /// Rotary angles of the group's rows.
    pub rope: &'a RopeAngles<B>,
    /// Attention mask of the group's rows.
    pub mask: &'a AttentionMask<B>,
    /// Where the group's keys/values go and come from (its route).
    pub store: &'a mut S,
}
