//! Rows quantized into the int8 KV format ([`crate::kv_quantization`]) in one pass on flex.
//!
//! Burn's ops quantize a tensor in eight passes (absolute value, block maximum, a division by
//! 127, the zero-scale mask, the division of every value, rounding, clamping, the integer cast),
//! each allocating its result, on one thread: filling an int8 cache with 8 x 4,096 tokens of
//! SmolLM2's keys and values took more than half of a decode benchmark's run, and it is part of
//! every prompt's prefill into an int8 cache. Here each row is read once and its codes and
//! scales written once, the rows spread over the pool.
//!
//! # Contract
//! [`quantize_rows`] returns exactly what the generic path returns (the same codes and scales, bit
//! for bit, for finite inputs): per block, the scale is `max |x| / 127` rounded to the rows' float
//! type, and each code `round(x / scale)` (ties to even) with the quotient rounded to that type
//! first (Burn's half-precision division rounds its result), clamped to `-127..=127`; a block of
//! zeros has scale 0 and codes 0. `None` (the caller takes Burn's ops) for any other backend,
//! element type, code type than `i8`, or a layout whose rows are not contiguous.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor};
use burn_flex::FlexTensor;
use half::{bf16, f16};
use rayon::prelude::*;

use super::strided::{Operand, Rows};
use super::tensor::{flex_float, from_flex, from_flex_int};
use super::vector::KernelElement;
use crate::kv_quantization::{QuantizedRows, INT8_MAX_CODE};

/// Values below which the rows are quantized on the calling thread (a decode step's new keys
/// and values: a few hundred values, less than handing work to the pool costs).
const PARALLEL_VALUES: usize = 1 << 15;

/// See the module docs.
pub(crate) fn quantize_rows<B: Backend>(
    rows: &Tensor<B, 4>,
    block: usize,
    codes: DType,
) -> Option<QuantizedRows<B>> {
    if codes != DType::I8 {
        return None;
    }
    let rows = flex_float(rows)?;
    let (codes, scales) = match rows.dtype() {
        DType::F32 => quantize::<f32>(&rows, block),
        DType::F16 => quantize::<f16>(&rows, block),
        DType::BF16 => quantize::<bf16>(&rows, block),
        _ => None,
    }?;
    Some(QuantizedRows {
        codes: from_flex_int(codes)?,
        scales: from_flex(scales)?,
    })
}

fn quantize<E: KernelElement>(rows: &FlexTensor, block: usize) -> Option<(FlexTensor, FlexTensor)> {
    let operand = Operand::<E>::new(rows)?;
    let [batch, heads, len, width] = operand.shape;
    if operand.strides[3] != 1 || block == 0 || !width.is_multiple_of(block) {
        return None;
    }
    let blocks = width / block;
    let mut codes = super::tensor::zeroed(Shape::from(vec![batch, heads, len, width]), DType::I8);
    let mut scales = super::tensor::zeroed(Shape::from(vec![batch, heads, len, blocks]), E::DTYPE);
    let code_out = codes.try_storage_mut::<i8>()?;
    let scale_out = E::storage_mut(&mut scales);
    // Row `index` is `[b, h, t]` of the rows, in the order the outputs store them.
    let quantize_one = |(index, (codes, scales)): (usize, (&mut [i8], &mut [E]))| {
        let (b, h, t) = (index / (heads * len), index / len % heads, index % len);
        let source = Rows::new(&operand, b, h, t, 1, width);
        quantize_row(source.row(0), block, codes, scales);
    };
    if batch * heads * len * width < PARALLEL_VALUES {
        code_out
            .chunks_exact_mut(width)
            .zip(scale_out.chunks_exact_mut(blocks))
            .enumerate()
            .for_each(quantize_one);
    } else {
        code_out
            .par_chunks_exact_mut(width)
            .zip(scale_out.par_chunks_exact_mut(blocks))
            .enumerate()
            .with_min_len(16)
            .for_each(quantize_one);
    }
    Some((codes, scales))
}

/// One row's codes and block scales (see the module docs for the rounding).
fn quantize_row<E: KernelElement>(values: &[E], block: usize, codes: &mut [i8], scales: &mut [E]) {
    const MAX: f32 = INT8_MAX_CODE as f32;
    let blocks = values
        .chunks_exact(block)
        .zip(codes.chunks_exact_mut(block));
    for ((values, codes), scale) in blocks.zip(scales) {
        let largest = values
            .iter()
            .map(|v| v.to_f32().abs())
            .fold(0.0f32, f32::max);
        *scale = E::from_f32(largest / MAX);
        let divisor = match scale.to_f32() {
            0.0 => 1.0,
            s => s,
        };
        for (code, value) in codes.iter_mut().zip(values) {
            let quotient = E::from_f32(value.to_f32() / divisor).to_f32();
            // Burn's `round` rounds ties to even. Within -127..=127 after the clamp: the cast
            // is exact.
            *code = quotient.round_ties_even().clamp(-MAX, MAX) as i8;
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, IntDType, TensorData};
    use burn_flex::Flex;

    use super::*;

    /// The generic path (Burn's ops), which the kernel must reproduce bit for bit.
    fn generic(rows: Tensor<Flex, 4>, block: usize) -> (Vec<i64>, Vec<f32>) {
        let quantized = crate::kv_quantization::quantize_rows_generic(rows, block, DType::I8);
        values(quantized)
    }

    fn values(quantized: QuantizedRows<Flex>) -> (Vec<i64>, Vec<f32>) {
        let codes = quantized.codes.cast(IntDType::I64).into_data();
        let scales = quantized
            .scales
            .cast(burn::tensor::FloatDType::F32)
            .into_data();
        (codes.to_vec().unwrap(), scales.to_vec().unwrap())
    }

    #[test]
    fn codes_and_scales_match_burns_ops_bit_for_bit() {
        let device = Default::default();
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for (shape, block) in [
                ([2, 3, 5, 64], 32),
                ([1, 2, 700, 64], 32),
                ([1, 1, 3, 24], 24),
                ([2, 1, 4, 12], 4),
            ] {
                let mut rows =
                    Tensor::<Flex, 4>::random(shape, Distribution::Normal(0.0, 3.0), &device);
                // A block of zeros (scale 0, codes 0) and values on rounding ties.
                let [_, _, len, width] = shape;
                let zeros = Tensor::<Flex, 4>::zeros([1, 1, 1, block], &device);
                rows = rows.slice_assign([0..1, 0..1, 0..1, 0..block], zeros);
                // Each block's largest value 127/8 makes its scale 1/8 exactly, and the others
                // (k + 1/2)/8 give quotients on ties, in every float type.
                let tie = |i: usize| match i % block {
                    0 => 127.0 / 8.0,
                    _ => ((i % 20) as f32 - 9.5) / 8.0,
                };
                let ties = Tensor::<Flex, 4>::from_data(
                    TensorData::new((0..width).map(tie).collect::<Vec<_>>(), [1, 1, 1, width]),
                    &device,
                );
                rows = rows.slice_assign([0..1, 0..1, len - 1..len, 0..width], ties);
                let rows = rows.cast(burn::tensor::FloatDType::from(dtype));
                let expected = generic(rows.clone(), block);
                let quantized = quantize_rows(&rows, block, DType::I8).expect("flex takes it");
                assert_eq!(quantized.codes.dtype(), DType::I8);
                assert_eq!(quantized.scales.dtype(), dtype);
                assert_eq!(
                    values(quantized),
                    expected,
                    "{dtype:?} {shape:?} block {block}"
                );
                // A strided view (heads swapped with rows) gives the same as its copy.
                let view = rows.clone().swap_dims(1, 2);
                let quantized = quantize_rows(&view, block, DType::I8).expect("strided rows");
                assert_eq!(values(quantized), generic(view, block), "{dtype:?} strided");
            }
        }
    }

    #[test]
    fn other_code_types_and_layouts_are_left_to_burn() {
        let device = Default::default();
        let rows = Tensor::<Flex, 4>::ones([1, 1, 2, 8], &device);
        assert!(quantize_rows(&rows, 4, DType::I32).is_none());
        assert!(quantize_rows(&rows, 3, DType::I8).is_none());
        // Columns not contiguous.
        assert!(quantize_rows(&rows.swap_dims(2, 3), 1, DType::I8).is_none());
    }
}
