//! The int8 KV format ([`KvDtype::Int8`](crate::KvDtype::Int8)): keys/values cut into blocks
//! along the head, each stored as 8-bit codes and one scale, written with Burn's ops so that
//! every backend quantizes alike.
//!
//! # Scheme
//! For a block `x` of `block` values (one head's row of one token, or a part of it):
//! `s = max|x| / 127` in the float type of `x`, codes `q = clamp(round(x / s), -127, 127)`
//! (0 for an all-zero block, whose scale is 0), and `x ≈ q s`. Symmetric, per token and head,
//! as llama.cpp's `q8_0`: a token's block is quantized once, when the token is appended, and
//! never again (schemes with per-channel key scales, as KIVI's, need a group of tokens before
//! they can quantize and keep the newest ones in floats).
//!
//! # Error bound
//! Computed in f32, every dequantized value is within `s / 2` of the original (the rounding),
//! plus the rounding of `x / s` itself: `|x - q s| <= s (1/2 + 128 ε)`, `ε` the float type's
//! unit roundoff (2⁻²⁴ in f32, 2⁻¹¹ in f16). The conformance suite checks it against an f64
//! reference on every backend.
//!
//! # Shapes
//! - rows: `[batch, heads, len, head_dim]`, `head_dim` a multiple of `block`
//! - codes: `[batch, heads, len, head_dim]` (integers in `-127..=127`, stored as the row
//!   format's integer type)
//! - scales: `[batch, heads, len, head_dim / block]`

use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Int, IntDType, Tensor};

/// Largest code magnitude: symmetric codes leave -128 unused, so that `-x` quantizes to `-q`.
pub const INT8_MAX_CODE: f64 = 127.0;

/// Rows of keys or values in the int8 format. See the module docs.
#[derive(Debug, Clone)]
pub struct QuantizedRows<B: Backend> {
    /// `[batch, heads, len, head_dim]` codes in `-127..=127`.
    pub codes: Tensor<B, 4, Int>,
    /// `[batch, heads, len, head_dim / block]` scales, in the float type of the rows.
    pub scales: Tensor<B, 4>,
}

impl<B: Backend> QuantizedRows<B> {
    /// Storage for `len` rows of `[batch, heads]` heads of `head_dim` values, all zero, with
    /// `blocks` scales a row: codes of the integer type `codes` and scales of the float type
    /// `scales`.
    pub fn zeros(
        [batch, heads, len, head_dim]: [usize; 4],
        blocks: usize,
        (codes, scales): (DType, DType),
        device: &B::Device,
    ) -> Self {
        Self {
            codes: Tensor::zeros([batch, heads, len, head_dim], (device, codes)),
            scales: Tensor::zeros([batch, heads, len, blocks], (device, scales)),
        }
    }

    /// Rows `rows` (of the third axis) of every sequence and head.
    pub fn slice_rows(&self, rows: std::ops::Range<usize>) -> Self {
        let [batch, heads, _, head_dim] = self.codes.dims();
        let blocks = self.scales.dims()[3];
        Self {
            codes: self
                .codes
                .clone()
                .slice([0..batch, 0..heads, rows.clone(), 0..head_dim]),
            scales: self
                .scales
                .clone()
                .slice([0..batch, 0..heads, rows, 0..blocks]),
        }
    }

    /// `self` with `rows` written at row `start` of every sequence and head: in place when the
    /// storage is uniquely owned, through the cache's own write for codes and scales alike
    /// (burn-flex's `slice_assign` copies its whole destination; see
    /// [`write_slots`](crate::kv_cache::write_slots)).
    pub fn write_rows(self, start: usize, rows: Self) -> Self {
        Self {
            codes: crate::kernels::write_int_slots(self.codes, start, rows.codes),
            scales: crate::kernels::write_slots(self.scales, start, rows.scales),
        }
    }

    /// These rows without those of sequence `sequence` (along the batch axis), and that
    /// sequence's alone, each in buffers of their own.
    pub fn split_sequence(self, sequence: usize) -> (Self, Self) {
        let (codes_kept, codes_taken) =
            crate::kv_cache::split_rows(self.codes, sequence, |t| t.add_scalar(0));
        let (scales_kept, scales_taken) =
            crate::kv_cache::split_rows(self.scales, sequence, |t| t.mul_scalar(1.0));
        (
            Self {
                codes: codes_kept,
                scales: scales_kept,
            },
            Self {
                codes: codes_taken,
                scales: scales_taken,
            },
        )
    }

    /// Bytes of the codes and scales held.
    pub fn bytes(&self) -> usize {
        self.codes.shape().num_elements() * self.codes.dtype().size()
            + self.scales.shape().num_elements() * self.scales.dtype().size()
    }

    /// The rows the codes and scales stand for, `q s`, in the scales' float type.
    pub fn dequantize(&self) -> Tensor<B, 4> {
        let [batch, heads, len, head_dim] = self.codes.dims();
        let blocks = self.scales.dims()[3];
        let block = head_dim / blocks;
        let codes: Tensor<B, 4> = self
            .codes
            .clone()
            .cast(FloatDType::from(self.scales.dtype()));
        let scales = self.scales.clone().reshape([batch, heads, len * blocks, 1]);
        codes
            .reshape([batch, heads, len * blocks, block])
            .mul(scales)
            .reshape([batch, heads, len, head_dim])
    }
}

/// `rows` in the int8 format with blocks of `block` values, the codes stored as `codes` (an
/// integer type). See the module docs.
///
/// # Panics
/// When `block` does not divide the head size (the callers take it from a
/// [`KvRowFormat`](crate::KvRowFormat), which guarantees it).
pub fn quantize_rows<B: Backend>(
    rows: Tensor<B, 4>,
    block: usize,
    codes: DType,
) -> QuantizedRows<B> {
    if let Some(quantized) = crate::kernels::quantize_rows(&rows, block, codes) {
        return quantized;
    }
    quantize_rows_generic(rows, block, codes)
}

/// [`quantize_rows`] with Burn's ops on any backend (the definition the flex kernel reproduces).
pub(crate) fn quantize_rows_generic<B: Backend>(
    rows: Tensor<B, 4>,
    block: usize,
    codes: DType,
) -> QuantizedRows<B> {
    let [batch, heads, len, head_dim] = rows.dims();
    assert!(
        block > 0 && head_dim.is_multiple_of(block),
        "int8 blocks of {block} values do not tile heads of {head_dim}"
    );
    let blocks = head_dim / block;
    let rows = rows.reshape([batch, heads, len * blocks, block]);
    let scales = rows.clone().abs().max_dim(3).div_scalar(INT8_MAX_CODE);
    // An all-zero block has scale 0 and codes 0: divide it by 1 instead of 0.
    let divisors = scales
        .clone()
        .mask_fill(scales.clone().equal_elem(0.0), 1.0);
    let code_values = rows
        .div(divisors)
        .round()
        .clamp(-INT8_MAX_CODE, INT8_MAX_CODE)
        .reshape([batch, heads, len, head_dim]);
    QuantizedRows {
        codes: code_values.cast(IntDType::from(codes)),
        scales: scales.reshape([batch, heads, len, blocks]),
    }
}

/// `rows` quantized and dequantized again: what a reader of an int8 cache sees of them.
pub fn int8_round_trip<B: Backend>(rows: Tensor<B, 4>, block: usize, codes: DType) -> Tensor<B, 4> {
    quantize_rows(rows, block, codes).dequantize()
}
