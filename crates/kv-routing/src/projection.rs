//! [`project`]: a `burn::nn::Linear` applied as one rank-2 product.
//!
//! `Linear::forward` raises the weight to the input's rank (`unsqueeze`) for a batched matmul.
//! On a contiguous `[in, out]` weight that is free, but a weight stored as the transposed view
//! of a checkpoint's `[out, in]` matrix (how pretrained weights load, see
//! `kv-routing-hf`) cannot be reshaped without a copy, which flex makes on every call.
//! Flattening the *input* to `[rows, in]` instead keeps the weight as it is: backends multiply
//! by its strides directly, and the transposed layout is the fast one for the few rows of a
//! decode step (each output reads a contiguous row of the checkpoint's matrix, and gemm needs
//! no packing).

use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `x W + b` over the last axis of `x`, with `W` used through its strides.
///
/// # Shapes
/// - x: `[..., in]`
/// - output: `[..., out]`
pub fn project<B: Backend, const D: usize>(linear: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let y = matmul_last_axis(x, linear.weight.val());
    match &linear.bias {
        Some(bias) => y + bias.val().unsqueeze(),
        None => y,
    }
}

/// `x W` over the last axis of `x`, as one rank-2 product with `W` as it is (contiguous or a
/// transposed view, such as a tied LM head's transposed embedding).
///
/// # Shapes
/// - x: `[..., in]`
/// - weight: `[in, out]`
/// - output: `[..., out]`
pub fn matmul_last_axis<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
) -> Tensor<B, D> {
    let [d_input, d_output] = weight.dims();
    let mut dims = x.dims();
    let rows = dims[..D - 1].iter().product();
    let y = x.reshape([rows, d_input]).matmul(weight);
    dims[D - 1] = d_output;
    y.reshape(dims)
}
