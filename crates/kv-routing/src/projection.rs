//! [`Projection`]: a linear layer whose weight is either floats (a `burn::nn::Linear`'s) or a
//! [`BlockWeight`] kept as a GGUF file stores it, and [`project`], which applies it as one
//! rank-2 product.
//!
//! # Block weights
//! A projection holding a [`BlockWeight`] keeps its float `weight` *lazy*: an uninitialized
//! `Param` whose initializer dequantizes the blocks. Where the backend multiplies blocks in place
//! (burn-flex, [`crate::kernels::block_product`]) the forward pass never asks for it and the
//! blocks are all the memory the weight takes; on every other backend the first forward pass
//! widens it once (the run's float type) and multiplies floats from then on. Anything else that
//! reads `weight` (saving a record, a gradient) gets the dequantized matrix, never a wrong one.
//! The record of a `Projection` is that of a `Linear` (`weight`, `bias`): checkpoints written
//! with `Linear` fields load unchanged, and a block projection saves its dequantized weight.
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

use burn::module::{Module, Param, ParamId};
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Shape, Tensor, TensorData};

use crate::block_weight::{BlockFormat, BlockWeight, BLOCK_VALUES};
use crate::sharing_adapter::{AdapterRows, LowRankDelta};

/// The most rows a product is computed transposed for (see the module docs).
pub const MAX_TRANSPOSED_ROWS: usize = 32;

/// A linear layer `x W + b` with float or block weights (see the module docs).
#[derive(Module, Debug)]
pub struct Projection<B: Backend> {
    /// `[in, out]` weight: a checkpoint's `[out, in]` matrix used through its transposed view,
    /// or, with `blocks`, their dequantized form, built only when something asks for it.
    pub weight: Param<Tensor<B, 2>>,
    /// `[out]` bias.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// The weight as blocks (`[out, in]`), multiplied in place where the backend can.
    #[module(skip)]
    pub blocks: Option<BlockWeight>,
    /// The low-rank delta added on passes whose route shares keys/values
    /// ([`crate::sharing_adapter`]), if the model has sharing adapters.
    pub sharing: Option<LowRankDelta<B>>,
}

impl<B: Backend> From<Linear<B>> for Projection<B> {
    fn from(linear: Linear<B>) -> Self {
        Self {
            weight: linear.weight,
            bias: linear.bias,
            blocks: None,
            sharing: None,
        }
    }
}

impl<B: Backend> Projection<B> {
    /// `[in, out]`, without building a lazy weight.
    pub fn dims(&self) -> [usize; 2] {
        self.weight.lazy_shape().dims()
    }

    /// A projection whose weight is `blocks` (`[out, in]`) with `bias`, on `device`. Its float
    /// weight is built, in `device`'s float type, only if something asks for it.
    pub fn from_blocks(
        blocks: BlockWeight,
        bias: Option<Param<Tensor<B, 1>>>,
        device: &B::Device,
    ) -> Self {
        Self {
            weight: lazy_dequantized(&blocks, device, true),
            bias,
            blocks: Some(blocks),
            sharing: None,
        }
    }

    /// This projection with its weight in `format`: blocks already in `format` stay as they
    /// are, anything else is quantized from its float values ([`BlockWeight::quantize`]). A
    /// weight whose rows are not whole blocks (an input width not a multiple of
    /// [`BLOCK_VALUES`](crate::BLOCK_VALUES)) stays as it is.
    pub fn into_blocks(self, format: BlockFormat) -> crate::Result<Self> {
        let [d_input, _] = self.dims();
        if self.blocks.as_ref().is_some_and(|b| b.format() == format)
            || !d_input.is_multiple_of(BLOCK_VALUES)
        {
            return Ok(self);
        }
        let device = self.weight.lazy_device();
        let blocks = quantized_rows(self.weight.val().transpose(), format)?;
        Ok(Self {
            sharing: self.sharing,
            ..Self::from_blocks(blocks, self.bias, &device)
        })
    }
}

/// `matrix` (`[rows, cols]` as seen, whatever its layout) quantized to `format` on the host, one
/// row per block row.
pub(crate) fn quantized_rows<B: Backend>(
    matrix: Tensor<B, 2>,
    format: BlockFormat,
) -> crate::Result<BlockWeight> {
    let dims = matrix.dims();
    let values: Vec<f32> = matrix
        .into_data()
        .convert::<f32>()
        .into_vec()
        .expect("converted to f32");
    BlockWeight::quantize(format, dims, &values)
}

/// A parameter holding `blocks` (`[rows, cols]`) dequantized in `device`'s float type,
/// computed on its first use: `[cols, rows]`, the transposed view, when `transposed` (a
/// projection's weight), else `[rows, cols]` (an embedding table).
pub(crate) fn lazy_dequantized<B: Backend>(
    blocks: &BlockWeight,
    device: &B::Device,
    transposed: bool,
) -> Param<Tensor<B, 2>> {
    let [rows, cols] = blocks.dims();
    let source = blocks.clone();
    let shape = if transposed {
        [cols, rows]
    } else {
        [rows, cols]
    };
    Param::uninitialized(
        ParamId::new(),
        move |device, require_grad| {
            let values = TensorData::new(source.dequantize(), [rows, cols]);
            let matrix = Tensor::<B, 2>::from_data(values, device);
            let matrix = if transposed {
                matrix.transpose()
            } else {
                matrix
            };
            matrix.set_require_grad(require_grad)
        },
        device.clone(),
        false,
        Shape::new(shape),
    )
}

/// `x W + b` over the last axis of `x`, with `W` used through its strides, or read as blocks
/// where the backend multiplies them in place.
///
/// # Shapes
/// - x: `[..., in]`
/// - output: `[..., out]`
pub fn project<B: Backend, const D: usize>(
    projection: &Projection<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    let y = match &projection.blocks {
        Some(blocks) => blocks_last_axis(x, blocks, || projection.weight.val()),
        None => matmul_last_axis(x, projection.weight.val()),
    };
    match &projection.bias {
        Some(bias) => y + bias.val().unsqueeze(),
        None => y,
    }
}

/// [`project`] plus the projection's sharing delta on `rows` (see
/// [`crate::sharing_adapter`]).
///
/// # Shapes
/// - x: `[batch, seq_len, in]`
/// - output: `[batch, seq_len, out]`
pub(crate) fn project_adapted<B: Backend>(
    projection: &Projection<B>,
    x: Tensor<B, 3>,
    rows: &AdapterRows<B>,
) -> Tensor<B, 3> {
    match (&projection.sharing, rows) {
        (None, _) | (_, AdapterRows::None) => project(projection, x),
        (Some(delta), rows) => rows.add(delta, x.clone(), project(projection, x)),
    }
}

/// `x Wᵀ` over the last axis of `x` for a block matrix `W` (`[out, in]`): the backend's block
/// kernel, or the float product with `weight()`, its dequantized `[in, out]` form.
///
/// # Shapes
/// - x: `[..., in]`
/// - output: `[..., out]`
pub(crate) fn blocks_last_axis<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    blocks: &BlockWeight,
    weight: impl FnOnce() -> Tensor<B, 2>,
) -> Tensor<B, D> {
    let [d_output, d_input] = blocks.dims();
    let mut dims = x.dims();
    let rows = dims[..D - 1].iter().product();
    // Backends that do not multiply blocks take the float product without a detour.
    if !crate::kernels::multiplies_blocks::<B>() {
        return matmul_last_axis(x, weight());
    }
    match crate::kernels::block_product(&x.clone().reshape([rows, d_input]), blocks) {
        Some(y) => {
            dims[D - 1] = d_output;
            y.reshape(dims)
        }
        None => matmul_last_axis(x, weight()),
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
