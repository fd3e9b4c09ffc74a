//! Products of many half-precision rows (f16, bf16) computed by the f32 matrix product.
//!
//! flex hands a half-precision matmul to gemm's f16 path, which on CPUs without native f16
//! arithmetic (this machine's AMD EPYC) runs about 3x slower than its f32 path: a ~1,000-token
//! SmolLM2 prompt took 6.2 ms a token in f16 against 2.2 in f32 (issue 29). Widening the operands
//! costs one pass over the weight (`in x out` values) and the rows, while the product is
//! `rows x in x out` multiply-adds: past the few rows of a decode step (the [`super::matvec`]
//! kernel's), the widening is a small fraction of the product, and the product runs at the f32
//! rate.
//!
//! # Contract
//! [`half_product`] computes `y = x W` for `x` `[rows, in]` and `W` `[in, out]` of one half type,
//! with more rows than [`super::matvec`] streams ([`MAX_STREAMED_HALF_ROWS`]) and `W` the
//! transposed view of a checkpoint's contiguous `[out, in]` matrix (how weights load; the tied head
//! is one too). The weight is widened one block of outputs at a time (at most [`BLOCK_VALUES`] f32
//! values, so the f32 copy stays small even for a 49,152-word vocabulary), each block multiplied by
//! gemm's f32 product into a fresh buffer ([`super::matrix`]), and every output rounded once to
//! the half type. It returns `None`, leaving the product to flex's matmul, for any other element
//! type, layout or row count. The sums are f32 sums (gemm's f16 path also accumulates in f32):
//! results agree with an f64 product of the half values to one rounding of the half type.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor};
use burn_flex::FlexTensor;
use half::{bf16, f16};
use rayon::prelude::*;

use super::matrix::{product, Matrix};
#[cfg(doc)]
use super::matvec::MAX_STREAMED_HALF_ROWS;
use super::matvec::{dims, max_streamed_rows};
use super::tensor::{flex_float, from_flex, widened_half};
use super::vector::KernelElement;

/// The most f32 values of the weight widened at a time (8 MB): enough outputs per block for
/// gemm to run at its rate, little memory beside the half-precision weight.
pub(crate) const BLOCK_VALUES: usize = 1 << 21;

/// `x W` in f32 arithmetic for many half-precision rows, or `None` (see the module docs).
pub(crate) fn half_product<B: Backend>(
    x: &Tensor<B, 2>,
    weight: &Tensor<B, 2>,
) -> Option<Tensor<B, 2>> {
    half_product_in_blocks(x, weight, BLOCK_VALUES)
}

/// [`half_product`] with blocks of at most `block_values` widened values.
pub(crate) fn half_product_in_blocks<B: Backend>(
    x: &Tensor<B, 2>,
    weight: &Tensor<B, 2>,
    block_values: usize,
) -> Option<Tensor<B, 2>> {
    let x_flex = flex_float(x)?;
    let weight_flex = flex_float(weight)?;
    match (x_flex.dtype(), weight_flex.dtype()) {
        (DType::F16, DType::F16) => widened::<f16, B>(&x_flex, &weight_flex, block_values),
        (DType::BF16, DType::BF16) => widened::<bf16, B>(&x_flex, &weight_flex, block_values),
        _ => None,
    }
}

fn widened<E: KernelElement, B: Backend>(
    x: &FlexTensor,
    weight: &FlexTensor,
    block_values: usize,
) -> Option<Tensor<B, 2>> {
    let [rows, d_input] = dims(x);
    let [weight_input, d_output] = dims(weight);
    if rows <= max_streamed_rows(E::DTYPE)
        || weight_input != d_input
        || d_input == 0
        || d_output == 0
    {
        return None;
    }
    // The checkpoint layout: output `o`'s weights are the contiguous `d_input` values at
    // `start + o * row_stride`.
    let layout = weight.layout();
    let (start, strides) = (layout.start_offset(), layout.strides());
    let (input_stride, row_stride) = (strides[0], strides[1]);
    if input_stride != 1 || row_stride < d_input as isize {
        return None;
    }
    let row_stride = row_stride as usize;
    let weights = &E::storage(weight)[start..];
    if weights.len() < (d_output - 1) * row_stride + d_input {
        return None;
    }

    let x32 = widened_half(x)?;
    let lhs = Matrix::new(&x32)?;
    let block = (block_values / d_input).clamp(1, d_output);
    let mut y = super::tensor::zeroed(Shape::from(vec![rows, d_output]), E::DTYPE);
    let y_values = E::storage_mut(&mut y);
    let mut block_weight = super::tensor::zeroed(Shape::from(vec![block, d_input]), DType::F32);
    for first in (0..d_output).step_by(block) {
        let outputs = block.min(d_output - first);
        // `[outputs, in]` widened (rows of the checkpoint's matrix), used transposed.
        block_weight.storage_mut::<f32>()[..outputs * d_input]
            .par_chunks_mut(d_input)
            .enumerate()
            .for_each(|(o, row)| {
                let at = (first + o) * row_stride;
                E::widen(&weights[at..at + d_input], row);
            });
        let rhs = Matrix::new(&block_weight)?.first_rows(outputs).transposed();
        let product = product(&lhs, &rhs, d_input);
        let product = product.storage::<f32>();
        y_values
            .par_chunks_mut(d_output)
            .zip(product.par_chunks(outputs))
            .for_each(|(y_row, p_row)| E::narrow(p_row, &mut y_row[first..first + outputs]));
    }
    from_flex(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;
    use burn_flex::Flex;

    use crate::kernels::flex::tensor::{f32_values, product_reference as reference};

    #[test]
    fn half_products_match_f64_of_their_values_across_blocks() {
        let device = Default::default();
        // One rounding of each f32 sum: within 2^-11 (f16) or 2^-8 (bf16) of the result.
        for (dtype, tolerance) in [(DType::F16, 1e-3), (DType::BF16, 8e-3)] {
            for (rows, d_input, d_output, block_values) in [
                (49, 37, 29, BLOCK_VALUES),
                // Blocks of 7 outputs (300 / 37 = 8, clamped by the last block of 5).
                (53, 37, 61, 300),
                (100, 64, 1000, 64 * 128),
                // One output per block.
                (60, 20, 5, 1),
            ] {
                let half = |dims: [usize; 2]| {
                    Tensor::<Flex, 2>::random(dims, Distribution::Default, &device).cast(dtype)
                };
                let x = half([rows, d_input]);
                let weight = half([d_output, d_input]).transpose();
                let expected = reference(
                    &f32_values(&x),
                    &f32_values(&weight),
                    rows,
                    d_input,
                    d_output,
                );
                let y = half_product_in_blocks(&x, &weight, block_values)
                    .expect("the checkpoint layout takes the kernel");
                assert_eq!((y.dims(), y.dtype()), ([rows, d_output], dtype));
                let worst = f32_values(&y)
                    .iter()
                    .zip(&expected)
                    .map(|(&a, &b)| (a as f64 - b).abs() / (1.0 + b.abs()))
                    .fold(0.0, f64::max);
                assert!(
                    worst < tolerance,
                    "{dtype:?} {rows}x{d_input}x{d_output} blocks of {block_values}: {worst}"
                );
            }
        }
    }

    #[test]
    fn other_shapes_layouts_and_types_are_left_to_matmul() {
        let device = Default::default();
        let f16 = |dims: [usize; 2]| {
            Tensor::<Flex, 2>::random(dims, Distribution::Default, &device).cast(DType::F16)
        };
        // A decode step's few rows, and a served batch's, are matvec's.
        assert!(half_product(&f16([8, 16]), &f16([4, 16]).transpose()).is_none());
        assert!(half_product(&f16([48, 16]), &f16([4, 16]).transpose()).is_none());
        // A contiguous `[in, out]` weight.
        assert!(half_product(&f16([49, 16]), &f16([16, 4])).is_none());
        // f32.
        let f32 = Tensor::<Flex, 2>::random([9, 16], Distribution::Default, &device);
        let w32 = Tensor::<Flex, 2>::random([4, 16], Distribution::Default, &device);
        assert!(half_product(&f32, &w32.transpose()).is_none());
        // Mismatched inner sizes.
        assert!(half_product(&f16([49, 16]), &f16([4, 15]).transpose()).is_none());
    }
}
