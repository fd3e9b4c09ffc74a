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
//!
//! A product of a few rows (2 to [`MAX_TRANSPOSED_ROWS`]: a batched decode step, a short chunk) is computed
//! transposed, `(Wᵀ xᵀ)ᵀ`: the weight becomes the product's tall left operand and the rows its
//! narrow right one. Same sums in the same order (bit-identical on flex), but flex's gemm reads
//! a tall left operand about twice as fast as it reads a wide right one when the other side has
//! few rows (SmolLM2's `[1536, 576]` MLP matrices at 8 rows: 3.9 against 8.2 ms for 30 of them;
//! its `[49152, 576]` tied head: 5.0 against 9.0 ms; measured in docs/benchmarks.md). One row
//! keeps the direct form (matrix-vector), as do many rows (no difference from 64 rows on). A
//! backend's own few-row kernel goes first where there is one ([`crate::kernels`]; on flex up
//! to 8 rows, each weight streamed once on every core), then its half-precision product (on
//! flex, more rows of f16 or bf16 multiplied in f32, 3x faster than flex's own f16 product).
//! When training on flex, every product is the training kernel's (its own backward pass, results
//! written into fresh buffers without flex's extra copy).

use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// The most rows a product is computed transposed for (see the module docs).
pub const MAX_TRANSPOSED_ROWS: usize = 32;

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
    let x = x.reshape([rows, d_input]);
    let y = if let Some(y) = crate::kernels::training_product(&x, &weight) {
        y
    } else if let Some(y) = crate::kernels::few_row_product(&x, &weight) {
        y
    } else if let Some(y) = crate::kernels::half_product(&x, &weight) {
        y
    } else if (2..=MAX_TRANSPOSED_ROWS).contains(&rows) {
        weight.transpose().matmul(x.transpose()).transpose()
    } else {
        x.matmul(weight)
    };
    dims[D - 1] = d_output;
    y.reshape(dims)
}
