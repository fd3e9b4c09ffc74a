//! [`SwiGluFeedForward`]: the Llama MLP, `down(silu(gate(x)) * up(x))`.

use burn::config::Config;
use burn::module::{Initializer, Module};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::projection::project;

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
    /// Initializes the module on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> SwiGluFeedForward<B> {
        let linear = |d_input, d_output| {
            LinearConfig::new(d_input, d_output)
                .with_bias(false)
                .with_initializer(self.initializer.clone())
                .init(device)
        };
        SwiGluFeedForward {
            gate: linear(self.d_model, self.d_ff),
            up: linear(self.d_model, self.d_ff),
            down: linear(self.d_ff, self.d_model),
        }
    }
}

/// Gated feed-forward block with SiLU activation.
#[derive(Module, Debug)]
pub struct SwiGluFeedForward<B: Backend> {
    /// Gate projection, `[d_model, d_ff]`.
    pub gate: Linear<B>,
    /// Up projection, `[d_model, d_ff]`.
    pub up: Linear<B>,
    /// Down projection, `[d_ff, d_model]`.
    pub down: Linear<B>,
}

impl<B: Backend> SwiGluFeedForward<B> {
    /// # Shapes
    /// - x: `[batch, seq_len, d_model]`
    /// - output: `[batch, seq_len, d_model]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let gated = silu(project(&self.gate, x.clone())) * project(&self.up, x);
        project(&self.down, gated)
    }
}
