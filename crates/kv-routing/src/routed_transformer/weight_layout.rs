//! The memory layout of a model's float projection weights.
//!
//! A pretrained checkpoint's `[out, in]` matrices load as transposed views (`[in, out]` seen,
//! each output's weights contiguous), the layout the few-row products of a decode step read
//! fastest (see [`crate::projection`]). A training run's record stores the `[in, out]` values
//! row-major, so a model loaded from it would read its weights across rows: on SmolLM2 a decode
//! step took 1.5x as long from a run checkpoint as from the GGUF file it was trained from
//! (docs/benchmarks.md). Loaders put the weights back into the fast layout.

use burn::tensor::backend::Backend;

use super::RoutedTransformer;
use crate::projection::Projection;

impl<B: Backend> RoutedTransformer<B> {
    /// This model with every float projection weight (the blocks' seven and an untied LM head)
    /// stored as a contiguous `[out, in]` matrix used through its transposed view, as a
    /// pretrained checkpoint loads. Values and parameter ids are unchanged; block weights, and
    /// weights that require gradients (a model being trained), are left as they are.
    pub fn with_output_major_weights(mut self) -> Self {
        for block in &mut self.blocks {
            for projection in block.projections_mut() {
                output_major(projection);
            }
        }
        if let Some(head) = &mut self.lm_head {
            output_major(head);
        }
        self
    }
}

/// `projection`'s float weight as a contiguous `[out, in]` matrix seen through its transposed view.
fn output_major<B: Backend>(projection: &mut Projection<B>) {
    if projection.blocks.is_some() {
        return;
    }
    projection.weight = projection.weight.clone().map(|matrix| {
        // A weight that requires gradients (training) keeps its layout: the copy would not be
        // a leaf of the graph any more.
        if matrix.is_require_grad() {
            return matrix;
        }
        let [d_input, d_output] = matrix.dims();
        // Flattening the transposed view copies it into a contiguous `[out, in]` buffer, on
        // the device and in the weight's own type.
        matrix
            .transpose()
            .reshape([d_output * d_input])
            .reshape([d_output, d_input])
            .transpose()
    });
}
