//! [`SwiGluFeedForward`]: the Llama MLP, `down(silu(gate(x)) * up(x))`.
//!
//! `burn::nn::SwiGlu` computes the same gated unit (its `linear_inner` is our `gate`, its
//! `linear_outer` our `up`), but it applies them with `Linear::forward`, which raises each
//! weight to the input's rank. Pretrained weights are held as transposed views of the
//! checkpoint's `[out, in]` matrices, and raising such a view copies the whole matrix on every
//! call on flex — the copy that made the tied LM head cost 55% of a decode step (see
//! `projection`, and `backends/flex/tests/decode_allocations.rs`, which fails on any per-step
//! weight copy). So the three projections go through [`project`] instead, and the parameter
//! names stay Hugging Face's (`gate_proj`, `up_proj`, `down_proj` map one to one).

use burn::config::Config;
use burn::module::{Initializer, Module};
use burn::nn::LinearConfig;
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::error::KvRoutingError;
use crate::projection::{project_adapted, Projection};
use crate::sharing_adapter::AdapterRows;

/// Configuration of a [`SwiGluFeedForward`].
#[derive(Config, Debug)]
pub struct SwiGluFeedForwardConfig {
    /// Width of the residual stream.
    pub d_model: usize,
    /// Hidden width.
    pub d_ff: usize,
    /// Initializer of the three matrices. Default: normal with std 0.02.
    #[config(default = "Initializer::Normal{mean:0.0, std:0.02}")]
    pub initializer: Initializer,
}

impl SwiGluFeedForwardConfig {
    /// Initializes the module on `device`; a zero width is an error.
    pub fn init<B: Backend>(&self, device: &B::Device) -> crate::Result<SwiGluFeedForward<B>> {
        if self.d_model == 0 || self.d_ff == 0 {
            return Err(KvRoutingError::InvalidConfig(format!(
                "feed-forward widths must be positive (d_model = {}, d_ff = {})",
                self.d_model, self.d_ff
            )));
        }
        let linear = |d_input, d_output| {
            Projection::from(
                LinearConfig::new(d_input, d_output)
                    .with_bias(false)
                    .with_initializer(self.initializer.clone())
                    .init(device),
            )
        };
        Ok(SwiGluFeedForward {
            gate: linear(self.d_model, self.d_ff),
            up: linear(self.d_model, self.d_ff),
            down: linear(self.d_ff, self.d_model),
        })
    }
}

/// Gated feed-forward block with SiLU activation.
#[derive(Module, Debug)]
pub struct SwiGluFeedForward<B: Backend> {
    /// Gate projection, `[d_model, d_ff]`.
    pub gate: Projection<B>,
    /// Up projection, `[d_model, d_ff]`.
    pub up: Projection<B>,
    /// Down projection, `[d_ff, d_model]`.
    pub down: Projection<B>,
}

impl<B: Backend> SwiGluFeedForward<B> {
    /// # Shapes
    /// - x: `[batch, seq_len, d_model]`
    /// - output: `[batch, seq_len, d_model]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_on(x, &AdapterRows::None)
    }

    /// [`SwiGluFeedForward::forward`] with the sharing deltas on `rows`.
    ///
    /// # Shapes
    /// - x: `[batch, seq_len, d_model]`
    /// - output: `[batch, seq_len, d_model]`
    pub fn forward_on(&self, x: Tensor<B, 3>, rows: &AdapterRows<B>) -> Tensor<B, 3> {
        let gate = project_adapted(&self.gate, x.clone(), rows);
        let up = project_adapted(&self.up, x, rows);
        let gated = crate::kernels::swiglu(&gate, &up).unwrap_or_else(|| silu(gate) * up);
        project_adapted(&self.down, gated, rows)
    }
}
