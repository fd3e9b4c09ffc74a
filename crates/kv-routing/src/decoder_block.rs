//! [`DecoderBlock`]: a pre-norm Llama block whose attention is routed.

use burn::module::Module;
use burn::nn::RmsNorm;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::attention::{BlockGroup, StochasticKvAttention};
use crate::attention_mask::AttentionMask;
use crate::error::Result;
use crate::feed_forward::SwiGluFeedForward;
use crate::kernels::residual_add;
use crate::kv_store::KvStore;
use crate::projection::Projection;
use crate::rms_norm::rms_norm;
use crate::rope::RopeAngles;
use crate::sharing_adapter::AdapterRows;

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
    /// The block's seven matrices: query, key, value, output, gate, up, down.
    pub fn projections(&self) -> [&Projection<B>; 7] {
        let (attention, mlp) = (&self.attention, &self.mlp);
        [
            &attention.query,
            &attention.key,
            &attention.value,
            &attention.output,
            &mlp.gate,
            &mlp.up,
            &mlp.down,
        ]
    }

    /// [`DecoderBlock::projections`], mutable.
    pub fn projections_mut(&mut self) -> [&mut Projection<B>; 7] {
        let (attention, mlp) = (&mut self.attention, &mut self.mlp);
        [
            &mut attention.query,
            &mut attention.key,
            &mut attention.value,
            &mut attention.output,
            &mut mlp.gate,
            &mut mlp.up,
            &mut mlp.down,
        ]
    }

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
        let rows = AdapterRows::for_route(store.route());
        let normed = rms_norm(&self.attention_norm, x.clone());
        let x = residual_add(x, self.attention.forward(layer, normed, rope, mask, store)?);
        let mlp = self
            .mlp
            .forward_on(rms_norm(&self.mlp_norm, x.clone()), &rows);
        Ok(residual_add(x, mlp))
    }

    /// [`DecoderBlock::forward`] for a batch whose consecutive row ranges are groups with
    /// stores (routes), rotary angles and masks of their own: attention proper once per group
    /// on its rows, the projections and the feed-forward block once on the whole batch
    /// ([`StochasticKvAttention::forward_grouped`]). `rows` says which rows add the sharing
    /// deltas ([`AdapterRows::for_groups`], the same for every layer of a step).
    ///
    /// # Shapes
    /// - x: `[batch, seq_len, d_model]`, the groups' rows in order, covering the batch
    /// - output: `[batch, seq_len, d_model]`
    pub fn forward_grouped<S: KvStore<B>>(
        &self,
        layer: usize,
        x: Tensor<B, 3>,
        groups: &mut [BlockGroup<'_, B, S>],
        rows: &AdapterRows<B>,
    ) -> Result<Tensor<B, 3>> {
        let normed = rms_norm(&self.attention_norm, x.clone());
        let x = residual_add(
            x,
            self.attention
                .forward_grouped(layer, normed, groups, rows)?,
        );
        let mlp = self
            .mlp
            .forward_on(rms_norm(&self.mlp_norm, x.clone()), rows);
        Ok(residual_add(x, mlp))
    }
}
