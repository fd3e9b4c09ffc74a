//! burn-flex's CPU kernels (feature `flex`), reached only through [`crate::kernels`].
//!
//! - [`attention`]: causal grouped-query attention in one parallel pass (prefill, chunks, decode),
//!   with [`few_row_attention`] for the few query rows of a decode step;
//! - [`matvec`]: products of one to a few rows that stream each weight once on every core;
//!   [`block_product`]: products with block-quantized (GGUF) weights, read in place, and
//!   [`integer_product`] for a prompt's rows with Q8_0 weights as 8-bit integer products;
//!   [`half_product`]: products of more half-precision rows through the f32 matrix product;
//! - [`rms_norm`], [`swiglu`]: one-pass row kernels; [`half_elementwise`]: the residual
//!   stream's sums and the queries' scale in half precision;
//! - [`rotary`]: the rotary embedding in one pass, with its backward pass on `Autodiff<Flex>`;
//! - [`slot_write`]: the KV cache's append, in place;
//! - [`training_attention`], [`training_linear`], [`training_rms_norm`], [`training_swiglu`]:
//!   causal attention, the projections' product, RMS norm and SwiGLU's gate with their own
//!   backward passes on `Autodiff<Flex>`;
//! - [`vocab_loss`]: per-token cross-entropy and distillation over the vocabulary in one pass
//!   per row, with their backward passes;
//! - [`pool`]: running a forward pass on rayon's pool.
//!
//! [`mutants`]: deliberate errors of the training kernels' backward passes that the checks must
//! catch (tests and the `kernel-mutants` feature only).
//!
//! The shared pieces: [`tensor`] (the flex tensor behind a `Tensor<B, D>`), [`strided`] (bounds-
//! checked strided operands), [`matrix`] (strided f32 matrices and their product by gemm),
//! [`softmax`], [`vector`] (vector arithmetic, element types, the CPU feature check),
//! [`rounded_rows`] (rows rounded to 8 bits per block, the integer products' operand),
//! [`contiguous`] (strided tensors copied to the contiguous layout a row at a time).

pub(crate) mod attention;
pub(crate) mod block_product;
pub(crate) mod contiguous;
pub(crate) mod few_row_attention;
pub(crate) mod half_elementwise;
pub(crate) mod half_product;
pub(crate) mod int8_attention;
pub(crate) mod integer_product;
pub(crate) mod integer_product_avx2;
pub(crate) mod matrix;
pub(crate) mod matvec;
pub(crate) mod mutants;
pub(crate) mod pool;
pub(crate) mod quantize;
pub(crate) mod rms_norm;
pub(crate) mod rotary;
pub(crate) mod rounded_rows;
pub(crate) mod slot_write;
pub(crate) mod softmax;
pub(crate) mod strided;
pub(crate) mod swiglu;
pub(crate) mod tensor;
pub(crate) mod training_attention;
pub(crate) mod training_linear;
pub(crate) mod training_rms_norm;
pub(crate) mod training_swiglu;
pub(crate) mod vector;
pub(crate) mod vocab_loss;

use std::any::TypeId;

use burn::tensor::backend::Backend;

/// Whether `B` is burn-flex's backend (and not, say, `Autodiff<Flex>`, whose tensors are
/// another type: its kernels are the differentiable ones, [`training_attention`]). A
/// compile-time constant per `B`.
#[inline]
pub(crate) fn is_flex<B: Backend>() -> bool {
    TypeId::of::<B>() == TypeId::of::<burn_flex::Flex>()
}
