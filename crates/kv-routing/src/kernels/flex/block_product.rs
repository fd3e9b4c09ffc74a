//! Products `x Wᵀ` of burn-flex rows with a [`BlockWeight`] (`[out, in]`, llama.cpp's Q8_0 or
//! Q4_1 blocks), reading the blocks where they lie.
//!
//! # Few rows: streamed
//! A decode step's product (1 to [`MAX_STREAMED_ROWS`] rows) streams each weight row once: a
//! block's codes are widened to f32 in registers, multiplied with every input row's 32 values,
//! and the block's sum scaled by its f16 scale, so the weight costs the memory traffic of its
//! blocks (8.5 or 5 bits a value instead of 16 or 32). Q4_1's offsets need the input's block
//! sums, computed once per product: `Σ (d q + m) x = d Σ q x + m Σ x`. The outputs are split over
//! rayon's pool so that every core streams its share (as [`super::matvec`] does for floats).
//!
//! # More rows: dequantized panels, gemm
//! A prompt's product has the arithmetic to hide a widening pass: the weight is dequantized a
//! panel of rows at a time (a few megabytes, so that it stays in cache and the temporary memory
//! is bounded whatever the matrix, e.g. a tied `[49152, 576]` LM head) and each panel multiplied
//! by gemm straight into its columns of the result. Weights that ask for llama.cpp's
//! arithmetic (`BlockWeight::with_int8_prompt_products`) take [`super::integer_product`]
//! instead on CPUs with AVX2 or AVX-512 VNNI: the rows rounded to 8 bits per block and
//! multiplied with the codes as integers (which changes the result by the rows' rounding).
//!
//! # Contract
//! `x` `[rows, in]` of f32, f16 or bf16, contiguous, with `in` the blocks' `in`; the result
//! `[rows, out]` in `x`'s type, each element rounded once from its f32 sum. `None` for any other
//! backend, element type, layout or width. Sums run in another order than the dequantized
//! float product's: results agree to f32 rounding of the sums, not bit for bit.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor};
use burn_flex::FlexTensor;
use half::{bf16, f16};
use rayon::prelude::*;

use super::integer_product::{integer_product, takes_integer_product};
use super::matrix::{product_into, Matrix};
use super::matvec::{dims, PARALLEL_VALUES, TASKS_PER_THREAD};
use super::tensor::{f32_tensor, flex_float, from_flex, zeroed};
use super::vector::{has_avx2_fma_f16c, has_avx512_registers, KernelElement};
use crate::block_weight::{block_params, BlockFormat, BlockWeight, BLOCK_VALUES};

/// The most input rows a product streams; more are dequantized panels and gemm.
pub(crate) const MAX_STREAMED_ROWS: usize = 8;

/// Values of one dequantized panel (4 MiB of f32).
const PANEL_VALUES: usize = 1 << 20;

/// Deliberate errors of the streamed product, switched on only by the tests and
/// `kernel-mutants` builds ([`super::mutants`]): each must fail the f64 check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(any(test, feature = "kernel-mutants")), allow(dead_code))]
enum Mutation {
    /// Blocks summed without their scale.
    ScaleIgnored,
    /// A Q4_1 byte's nibbles read in the wrong order.
    NibblesSwapped,
    /// The last block of every row left out.
    LastBlockDropped,
}

#[cfg_attr(not(any(test, feature = "kernel-mutants")), allow(dead_code))]
impl Mutation {
    const ALL: [Mutation; 3] = [
        Mutation::ScaleIgnored,
        Mutation::NibblesSwapped,
        Mutation::LastBlockDropped,
    ];
}

/// `x Wᵀ` for flex rows `x` and block matrix `blocks` (see the module docs).
pub(crate) fn block_product<B: Backend>(
    x: &Tensor<B, 2>,
    blocks: &BlockWeight,
) -> Option<Tensor<B, 2>> {
    let x = flex_float(x)?;
    let y = match x.dtype() {
        DType::F32 => multiply::<f32>(&x, blocks),
        DType::F16 => multiply::<f16>(&x, blocks),
        DType::BF16 => multiply::<bf16>(&x, blocks),
        _ => None,
    };
    from_flex(y?)
}

fn multiply<E: KernelElement>(x: &FlexTensor, blocks: &BlockWeight) -> Option<FlexTensor> {
    let [rows, d_input] = dims(x);
    let [d_output, weight_input] = blocks.dims();
    if rows == 0 || d_input != weight_input {
        return None;
    }
    let (x_start, x_end) = x.layout().contiguous_offsets()?;
    let mut widened = Vec::new();
    let x_values = E::in_f32(&E::storage(x)[x_start..x_end], &mut widened);
    let y = if rows <= MAX_STREAMED_ROWS {
        streamed(blocks, x_values, rows)
    } else if takes_integer_product(blocks, rows) {
        integer_product(blocks, x_values, rows)
    } else {
        panels(blocks, x_values, rows)
    };
    let shape = Shape::from(vec![rows, d_output]);
    if E::DTYPE == DType::F32 {
        return Some(f32_tensor(y, shape));
    }
    let mut out = zeroed(shape, E::DTYPE);
    E::narrow(&y, E::storage_mut(&mut out));
    Some(out)
}

/// `[rows, out]` f32 by streaming the blocks (few rows).
fn streamed(blocks: &BlockWeight, x: &[f32], rows: usize) -> Vec<f32> {
    let [d_output, d_input] = blocks.dims();
    let n_blocks = d_input / BLOCK_VALUES;
    // Q4_1's offsets multiply the input's block sums.
    let block_sums: Vec<f32> = match blocks.format() {
        BlockFormat::Q4_1 => x
            .chunks_exact(BLOCK_VALUES)
            .map(|b| b.iter().sum())
            .collect(),
        BlockFormat::Q8_0 => Vec::new(),
    };
    let mutation = super::mutants::active("block_product", &Mutation::ALL);
    let task = Task {
        mutation,
        format: blocks.format(),
        bytes: blocks.bytes(),
        row_bytes: blocks.row_bytes(),
        x,
        block_sums: &block_sums,
        rows,
        n_blocks,
    };
    // Output-major (`[out, rows]`): each task writes a contiguous run.
    let mut transposed = vec![0f32; d_output * rows];
    if d_output * d_input < PARALLEL_VALUES {
        task.run(0, &mut transposed);
    } else {
        let tasks = rayon::current_num_threads() * TASKS_PER_THREAD;
        let chunk = d_output.div_ceil(tasks).next_multiple_of(8);
        transposed
            .par_chunks_mut(chunk * rows)
            .enumerate()
            .for_each(|(i, out)| task.run(i * chunk, out));
    }
    if rows == 1 {
        return transposed;
    }
    let mut y = vec![0f32; rows * d_output];
    for (o, outputs) in transposed.chunks_exact(rows).enumerate() {
        for (r, &value) in outputs.iter().enumerate() {
            y[r * d_output + o] = value;
        }
    }
    y
}

/// One streamed product's operands.
struct Task<'a> {
    #[cfg_attr(not(any(test, feature = "kernel-mutants")), allow(dead_code))]
    mutation: Option<Mutation>,
    format: BlockFormat,
    bytes: &'a [u8],
    row_bytes: usize,
    /// `[rows, in]` input rows.
    x: &'a [f32],
    /// `[rows, in / 32]` sums of the input's blocks (Q4_1 only).
    block_sums: &'a [f32],
    rows: usize,
    n_blocks: usize,
}

impl Task<'_> {
    /// `out[o * rows + r]` = output `first + o` of row `r`.
    fn run(&self, first: usize, out: &mut [f32]) {
        /// `self.$variant::<R>(first, out)` with `R` the task's row count (1 to 8).
        macro_rules! for_rows {
            ($variant:ident) => {
                match self.rows {
                    1 => self.$variant::<1>(first, out),
                    2 => self.$variant::<2>(first, out),
                    3 => self.$variant::<3>(first, out),
                    4 => self.$variant::<4>(first, out),
                    5 => self.$variant::<5>(first, out),
                    6 => self.$variant::<6>(first, out),
                    7 => self.$variant::<7>(first, out),
                    _ => self.$variant::<8>(first, out),
                }
            };
        }
        #[cfg(target_arch = "x86_64")]
        if has_avx512_registers() {
            // SAFETY: the CPU has the features the function is compiled for (checked above).
            return unsafe { for_rows!(run_avx512) };
        }
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma_f16c() {
            // SAFETY: as above.
            return unsafe { for_rows!(run_avx2) };
        }
        self.run_portable(first, out)
    }

    /// Blocks of a row that are summed (all of them but under a mutation).
    #[inline(always)]
    fn summed_blocks(&self) -> usize {
        #[cfg(any(test, feature = "kernel-mutants"))]
        if self.mutation == Some(Mutation::LastBlockDropped) {
            return self.n_blocks - 1;
        }
        self.n_blocks
    }

    /// A block's scale as the sums use it (itself but under a mutation).
    #[inline(always)]
    fn scale(&self, scale: f32) -> f32 {
        #[cfg(any(test, feature = "kernel-mutants"))]
        if self.mutation == Some(Mutation::ScaleIgnored) {
            return 1.0;
        }
        scale
    }

    /// Whether Q4_1's nibbles are read high first (never but under a mutation).
    #[inline(always)]
    fn nibbles_swapped(&self) -> bool {
        #[cfg(any(test, feature = "kernel-mutants"))]
        if self.mutation == Some(Mutation::NibblesSwapped) {
            return true;
        }
        false
    }

    fn run_portable(&self, first: usize, out: &mut [f32]) {
        let block_bytes = self.format.block_bytes();
        let width = self.n_blocks * BLOCK_VALUES;
        let mut codes = [0f32; BLOCK_VALUES];
        for (o, out) in out.chunks_exact_mut(self.rows).enumerate() {
            let row = &self.bytes[(first + o) * self.row_bytes..][..self.row_bytes];
            out.fill(0.0);
            for (b, block) in row
                .chunks_exact(block_bytes)
                .take(self.summed_blocks())
                .enumerate()
            {
                let [scale, offset] = block_params(self.format, block);
                match self.format {
                    BlockFormat::Q8_0 => {
                        for (code, &byte) in codes.iter_mut().zip(&block[2..]) {
                            *code = byte as i8 as f32;
                        }
                    }
                    BlockFormat::Q4_1 => {
                        let (low, high) = codes.split_at_mut(BLOCK_VALUES / 2);
                        let (low, high) = if self.nibbles_swapped() {
                            (high, low)
                        } else {
                            (low, high)
                        };
                        for ((low, high), &byte) in low.iter_mut().zip(high).zip(&block[4..]) {
                            *low = (byte & 0x0f) as f32;
                            *high = (byte >> 4) as f32;
                        }
                    }
                }
                for (r, out) in out.iter_mut().enumerate() {
                    let x = &self.x[r * width + b * BLOCK_VALUES..][..BLOCK_VALUES];
                    let dot: f32 = codes.iter().zip(x).map(|(q, x)| q * x).sum();
                    let offsets = match self.format {
                        BlockFormat::Q4_1 => offset * self.block_sums[r * self.n_blocks + b],
                        BlockFormat::Q8_0 => 0.0,
                    };
                    *out += self.scale(scale) * dot + offsets;
                }
            }
        }
    }

    /// The scale of the block at `p` (block `b` of its row) as the sums use it, after adding,
    /// for Q4_1, its offset times each row's block sum to `offsets`. Inlined into the vector
    /// variants, which are compiled for F16C.
    ///
    /// # Safety
    /// `p` addresses a whole block of `self.format`; the CPU has F16C.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn block_scale<const R: usize>(
        &self,
        p: *const u8,
        b: usize,
        offsets: &mut [f32; R],
    ) -> f32 {
        use std::arch::x86_64::*;
        // SAFETY: the header's bytes are inside the block (this function's contract).
        let half = |at: usize| unsafe {
            let bits = u16::from_le_bytes([*p.add(at), *p.add(at + 1)]);
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
        };
        if self.format == BlockFormat::Q4_1 {
            let offset = half(2);
            for (r, offsets) in offsets.iter_mut().enumerate() {
                *offsets += offset * self.block_sums[r * self.n_blocks + b];
            }
        }
        self.scale(half(0))
    }

    /// The streamed product for `R` rows (`R == self.rows`), AVX2/FMA/F16C.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run_avx2<const R: usize>(&self, first: usize, out: &mut [f32]) {
        use std::arch::x86_64::*;
        let block_bytes = self.format.block_bytes();
        let width = self.n_blocks * BLOCK_VALUES;
        let low_nibbles = _mm_set1_epi8(0x0f);
        for (o, out) in out.chunks_exact_mut(R).enumerate() {
            let row = &self.bytes[(first + o) * self.row_bytes..][..self.row_bytes];
            let mut sums = [_mm256_setzero_ps(); R];
            let mut offsets = [0f32; R];
            for (b, block) in row
                .chunks_exact(block_bytes)
                .take(self.summed_blocks())
                .enumerate()
            {
                let p = block.as_ptr();
                // SAFETY: `block` is one whole block of `block_bytes` bytes (its format's
                // layout): every load below reads inside it; `x` holds `R` rows of `width`.
                let (scale, codes) = unsafe {
                    let scale = self.block_scale(p, b, &mut offsets);
                    let codes = match self.format {
                        BlockFormat::Q8_0 => {
                            let q = p.add(2);
                            [0, 8, 16, 24].map(|k| {
                                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                                    q.add(k) as *const __m128i
                                )))
                            })
                        }
                        BlockFormat::Q4_1 => {
                            let packed = _mm_loadu_si128(p.add(4) as *const __m128i);
                            let low = _mm_and_si128(packed, low_nibbles);
                            let high = _mm_and_si128(_mm_srli_epi16::<4>(packed), low_nibbles);
                            let (low, high) = if self.nibbles_swapped() {
                                (high, low)
                            } else {
                                (low, high)
                            };
                            let widen = |v: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
                            [
                                widen(low),
                                widen(_mm_srli_si128::<8>(low)),
                                widen(high),
                                widen(_mm_srli_si128::<8>(high)),
                            ]
                        }
                    };
                    (_mm256_set1_ps(scale), codes)
                };
                for (r, sum) in sums.iter_mut().enumerate() {
                    // SAFETY: row `r`'s block `b` is inside `x` (`R` rows of `width`).
                    unsafe {
                        let x = self.x.as_ptr().add(r * width + b * BLOCK_VALUES);
                        let mut dot = _mm256_mul_ps(codes[0], _mm256_loadu_ps(x));
                        dot = _mm256_fmadd_ps(codes[1], _mm256_loadu_ps(x.add(8)), dot);
                        dot = _mm256_fmadd_ps(codes[2], _mm256_loadu_ps(x.add(16)), dot);
                        dot = _mm256_fmadd_ps(codes[3], _mm256_loadu_ps(x.add(24)), dot);
                        *sum = _mm256_fmadd_ps(dot, scale, *sum);
                    }
                }
            }
            for ((out, sum), offset) in out.iter_mut().zip(sums).zip(offsets) {
                let mut lanes = [0f32; 8];
                // SAFETY: eight f32 lanes into an array of eight.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
                *out = lanes.iter().sum::<f32>() + offset;
            }
        }
    }

    /// The streamed product for `R` rows with AVX-512: a block's 32 codes in two 16-lane
    /// registers (half the widening and multiply-adds of [`Task::run_avx2`]).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
    unsafe fn run_avx512<const R: usize>(&self, first: usize, out: &mut [f32]) {
        use std::arch::x86_64::*;
        let block_bytes = self.format.block_bytes();
        let width = self.n_blocks * BLOCK_VALUES;
        let low_nibbles = _mm_set1_epi8(0x0f);
        for (o, out) in out.chunks_exact_mut(R).enumerate() {
            let row = &self.bytes[(first + o) * self.row_bytes..][..self.row_bytes];
            let mut sums = [_mm512_setzero_ps(); R];
            let mut offsets = [0f32; R];
            for (b, block) in row
                .chunks_exact(block_bytes)
                .take(self.summed_blocks())
                .enumerate()
            {
                let p = block.as_ptr();
                // SAFETY: as in `run_avx2`: every load reads inside the block or inside `x`.
                let (scale, codes) = unsafe {
                    let scale = self.block_scale(p, b, &mut offsets);
                    let codes = match self.format {
                        BlockFormat::Q8_0 => [2, 18].map(|k| {
                            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                                p.add(k) as *const __m128i
                            )))
                        }),
                        BlockFormat::Q4_1 => {
                            let packed = _mm_loadu_si128(p.add(4) as *const __m128i);
                            let low = _mm_and_si128(packed, low_nibbles);
                            let high = _mm_and_si128(_mm_srli_epi16::<4>(packed), low_nibbles);
                            let (low, high) = if self.nibbles_swapped() {
                                (high, low)
                            } else {
                                (low, high)
                            };
                            [low, high].map(|v| _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v)))
                        }
                    };
                    (_mm512_set1_ps(scale), codes)
                };
                for (r, sum) in sums.iter_mut().enumerate() {
                    // SAFETY: row `r`'s block `b` is inside `x` (`R` rows of `width`).
                    unsafe {
                        let x = self.x.as_ptr().add(r * width + b * BLOCK_VALUES);
                        let dot = _mm512_mul_ps(codes[0], _mm512_loadu_ps(x));
                        let dot = _mm512_fmadd_ps(codes[1], _mm512_loadu_ps(x.add(16)), dot);
                        *sum = _mm512_fmadd_ps(dot, scale, *sum);
                    }
                }
            }
            for ((out, sum), offset) in out.iter_mut().zip(sums).zip(offsets) {
                *out = _mm512_reduce_add_ps(sum) + offset;
            }
        }
    }
}

/// `[rows, out]` f32 through dequantized panels and gemm (many rows).
fn panels(blocks: &BlockWeight, x: &[f32], rows: usize) -> Vec<f32> {
    let [d_output, d_input] = blocks.dims();
    let panel_rows = (PANEL_VALUES / d_input).max(16).min(d_output);
    let mut panel = vec![0f32; panel_rows * d_input];
    let mut y = vec![0f32; rows * d_output];
    let x = Matrix::contiguous(x, rows, d_input);
    for first in (0..d_output).step_by(panel_rows) {
        let count = panel_rows.min(d_output - first);
        let panel = &mut panel[..count * d_input];
        panel
            .par_chunks_mut(d_input)
            .enumerate()
            .for_each(|(o, out)| blocks.dequantize_rows(first + o..first + o + 1, out));
        // y[:, first..first + count] = x panelᵀ.
        let weight = Matrix::contiguous(panel, count, d_input).transposed();
        product_into(&x, &weight, &mut y[first..], d_output);
    }
    y
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Tensor, TensorData};
    use burn_flex::Flex;

    use super::*;
    use crate::kernels::flex::tensor::test_values;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        test_values(n, seed, 1.0)
    }

    /// `x Wᵀ` in f64 over the dequantized blocks: the reference.
    fn reference(blocks: &BlockWeight, x: &[f32], rows: usize) -> Vec<f64> {
        let [d_output, d_input] = blocks.dims();
        let w = blocks.dequantize();
        let mut y = vec![0f64; rows * d_output];
        for r in 0..rows {
            for o in 0..d_output {
                y[r * d_output + o] = (0..d_input)
                    .map(|i| x[r * d_input + i] as f64 * w[o * d_input + i] as f64)
                    .sum();
            }
        }
        y
    }

    fn check(format: BlockFormat, [d_output, d_input]: [usize; 2], rows: usize, dtype: DType) {
        checked(format, [d_output, d_input], rows, dtype, false).unwrap()
    }

    /// The product against f64 on the dequantized blocks, with `int8_prompts` asked for.
    fn checked(
        format: BlockFormat,
        [d_output, d_input]: [usize; 2],
        rows: usize,
        dtype: DType,
        int8_prompts: bool,
    ) -> Result<(), String> {
        let device = Default::default();
        let blocks =
            BlockWeight::quantize(format, [d_output, d_input], &values(d_output * d_input, 3))
                .unwrap()
                .with_int8_prompt_products(int8_prompts);
        let x_values = values(rows * d_input, 11);
        let x = Tensor::<Flex, 2>::from_data(
            TensorData::new(x_values.clone(), [rows, d_input]),
            &device,
        )
        .cast(dtype);
        // The reference reads the rows as the kernel receives them (rounded to `dtype`) and, for
        // the integer product, as it rounds them to 8 bits.
        let mut x_rounded: Vec<f32> = x.clone().cast(DType::F32).into_data().to_vec().unwrap();
        if takes_integer_product(&blocks, rows) {
            let mut rounded = super::super::rounded_rows::RoundedRows::default();
            rounded.round(&x_rounded);
            let scales = rounded.scales.iter().flat_map(|&s| [s; BLOCK_VALUES]);
            x_rounded = rounded
                .codes
                .iter()
                .zip(scales)
                .map(|(&c, s)| f32::from(c) * s)
                .collect();
        }
        let y = block_product(&x, &blocks).expect("flex rows of a supported type");
        assert_eq!(y.dims(), [rows, d_output]);
        assert_eq!(y.dtype(), dtype);
        let y: Vec<f32> = y.cast(DType::F32).into_data().to_vec().unwrap();
        let expected = reference(&blocks, &x_rounded, rows);
        let w = blocks.dequantize();
        let rounding = match dtype {
            DType::F32 => 0.0,
            DType::F16 => 2f64.powi(-11),
            _ => 2f64.powi(-8),
        };
        for r in 0..rows {
            for o in 0..d_output {
                // f32 sums of `d_input` terms, then one rounding to the output type.
                let magnitude: f64 = (0..d_input)
                    .map(|i| (x_rounded[r * d_input + i] as f64 * w[o * d_input + i] as f64).abs())
                    .sum();
                let e = expected[r * d_output + o];
                let bound = magnitude * d_input as f64 * 2f64.powi(-23) + e.abs() * rounding + 1e-6;
                let got = y[r * d_output + o] as f64;
                if (got - e).abs() > bound || got.is_nan() {
                    return Err(format!(
                        "{format} [{d_output}, {d_input}] x {rows} rows {dtype:?}: y[{r}, {o}] = {got}, expected {e} (bound {bound})"
                    ));
                }
            }
        }
        Ok(())
    }

    #[test]
    fn every_mutation_of_the_streamed_product_fails_the_check() {
        let survivors = super::super::mutants::surviving("block_product", &Mutation::ALL, || {
            // Both formats, a streamed product of several blocks per row.
            checked(BlockFormat::Q8_0, [9, 96], 2, DType::F32, false)?;
            checked(BlockFormat::Q4_1, [9, 96], 2, DType::F32, false)
        });
        assert!(survivors.is_empty(), "not caught: {survivors:?}");
    }

    #[test]
    fn products_match_f64_on_dequantized_blocks() {
        for format in [BlockFormat::Q8_0, BlockFormat::Q4_1] {
            // Widths of one and of several blocks, odd output counts, 1-8 streamed rows and
            // panel rows (more than one panel for the widest).
            for rows in [1, 2, 3, 5, 8, 9, 33] {
                check(format, [7, 32], rows, DType::F32);
                check(format, [45, 96], rows, DType::F32);
            }
            check(format, [2_100, 544], 2, DType::F32);
            check(format, [2_100, 544], 20, DType::F32);
            for dtype in [DType::F16, DType::BF16] {
                check(format, [37, 64], 1, dtype);
                check(format, [37, 64], 12, dtype);
            }
        }
    }

    /// Prompts with llama.cpp's arithmetic asked for: on a CPU with AVX2 or AVX-512 VNNI the
    /// integer product, checked against the rows as it rounds them; elsewhere (and for decode
    /// steps) the float path, checked against the rows as they are.
    #[test]
    fn int8_prompt_products_match_f64_on_what_they_multiply() {
        for rows in [2, 9, 20, 33] {
            checked(BlockFormat::Q8_0, [45, 96], rows, DType::F32, true).unwrap();
            checked(BlockFormat::Q4_1, [45, 96], rows, DType::F32, true).unwrap();
        }
        for dtype in [DType::F16, DType::BF16] {
            checked(BlockFormat::Q8_0, [37, 64], 12, dtype, true).unwrap();
            checked(BlockFormat::Q4_1, [37, 64], 12, dtype, true).unwrap();
        }
        // The rounding is real: against the unrounded rows the integer product is off by more
        // than f32's tolerance, so the check above compares what it must.
        if takes_integer_product(
            &BlockWeight::quantize(BlockFormat::Q8_0, [45, 96], &values(45 * 96, 3))
                .unwrap()
                .with_int8_prompt_products(true),
            20,
        ) {
            assert!(integer_product_off_unrounded_rows());
        }
    }

    /// Whether the integer product of 20 rows differs from the f64 product of the *unrounded*
    /// rows by more than the float path's tolerance.
    fn integer_product_off_unrounded_rows() -> bool {
        let [d_output, d_input, rows] = [45, 96, 20];
        let blocks = BlockWeight::quantize(
            BlockFormat::Q8_0,
            [d_output, d_input],
            &values(d_output * d_input, 3),
        )
        .unwrap()
        .with_int8_prompt_products(true);
        let x = values(rows * d_input, 11);
        let y = integer_product(&blocks, &x, rows);
        let expected = reference(&blocks, &x, rows);
        y.iter()
            .zip(&expected)
            .any(|(&got, &e)| (f64::from(got) - e).abs() > 1e-4 * (1.0 + e.abs()))
    }

    #[test]
    fn refuses_what_it_does_not_multiply() {
        let device = Default::default();
        let blocks = BlockWeight::quantize(BlockFormat::Q8_0, [4, 32], &values(128, 1)).unwrap();
        let narrow = Tensor::<Flex, 2>::zeros([2, 64], &device);
        assert!(block_product(&narrow, &blocks).is_none());
        let strided = Tensor::<Flex, 2>::zeros([64, 2], &device).transpose();
        assert!(block_product(&strided, &blocks).is_none());
        // Other backends (here training's Autodiff<Flex>) take the float product.
        let rows = Tensor::<burn_autodiff::Autodiff<Flex>, 2>::zeros([2, 32], &device);
        assert!(block_product(&rows, &blocks).is_none());
    }
}
