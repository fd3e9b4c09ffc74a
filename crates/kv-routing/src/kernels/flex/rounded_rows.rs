//! Rows of f32 rounded to 8-bit codes per block of [`ROUNDED_BLOCK`] values, the way llama.cpp
//! rounds the activations of its q8_0 dot products: the signed operand of the integer products
//! ([`super::int8_attention`]'s decode scores over an int8 cache on CPUs with AVX-512 VNNI,
//! [`super::integer_product`]'s prompt products with Q8_0 and Q4_1 weights on those and on AVX2
//! CPUs).
//!
//! # Contract
//! For each block of 32 values `x`: `scale = max |x| / 127` (in f32), `code = round(x · (127 /
//! max |x|))` with the factor and the product in f64 (`127 / max` overflows f32 for a block of
//! subnormal values) and ties rounded away from zero, clamped to `-127..=127`; a block of zeros
//! has scale 0 and codes 0; a block holding a NaN or an infinity has a NaN scale and codes 0, so
//! that whatever multiplies it carries the NaN as the float path would. Every value lies within
//! half a step (`scale / 2`) of `code · scale`, up to the f32 rounding of the scale.
//!
//! The integer instruction multiplies unsigned bytes by signed ones: the other operand goes in
//! shifted to unsigned (`w + 128`, the byte `w ^ 0x80`), and each block's `corrections` entry,
//! `-128 Σ code`, takes the shift's share back out of its sums (the AVX2 kernel gives the codes
//! the weight's sign instead; it reads the code sums, [`RoundedRows::code_sum`], for Q4_1's
//! offsets).
//!
//! The vector paths (AVX-512 with BW and DQ, or AVX2) compute exactly the scalar path's codes
//! (the same f64 products; rounding half away from zero as truncation of `x ± 0.5`, exact in
//! f64), so that all agree bit for bit (tested); they serve prompts, whose rows are many.

/// Values of a block: the Q8_0 and int8 cache block, half a 512-bit register of codes.
pub(crate) const ROUNDED_BLOCK: usize = 32;

/// Rows rounded per block (see the module docs).
#[derive(Default)]
pub(crate) struct RoundedRows {
    /// `[rows, width]`: the codes, in -127..=127.
    pub(crate) codes: Vec<i8>,
    /// `[rows, blocks]`: `max |x| / 127` of the block (0 for a block of zeros; NaN for a block
    /// with a non-finite value).
    pub(crate) scales: Vec<f32>,
    /// `[rows, blocks]`: `-128 x` the block's sum of codes.
    pub(crate) corrections: Vec<i32>,
}

/// Values below which the rows are rounded on the calling thread (a decode step's few rows).
const PARALLEL_VALUES: usize = 1 << 15;

impl RoundedRows {
    /// `Σ code` of block `block` (of all rows' blocks, row-major): what Q4_1's offsets multiply.
    pub(crate) fn code_sum(&self, block: usize) -> i32 {
        // Exact: the correction is -128 times the sum.
        -self.corrections[block] / 128
    }

    /// Rounds `values` (`[rows, width]`, `width` a multiple of [`ROUNDED_BLOCK`]), replacing what
    /// the buffers held; a prompt's rows over rayon's pool.
    pub(crate) fn round(&mut self, values: &[f32]) {
        debug_assert!(values.len().is_multiple_of(ROUNDED_BLOCK));
        let blocks = values.len() / ROUNDED_BLOCK;
        self.codes.clear();
        self.codes.resize(values.len(), 0);
        self.scales.clear();
        self.scales.resize(blocks, 0.0);
        self.corrections.clear();
        self.corrections.resize(blocks, 0);
        let part = Part {
            values,
            codes: &mut self.codes,
            scales: &mut self.scales,
            corrections: &mut self.corrections,
        };
        if values.len() < PARALLEL_VALUES {
            part.round();
            return;
        }
        use rayon::prelude::*;
        let chunk_blocks = PARALLEL_VALUES / ROUNDED_BLOCK;
        let chunk = chunk_blocks * ROUNDED_BLOCK;
        values
            .par_chunks(chunk)
            .zip(self.codes.par_chunks_mut(chunk))
            .zip(self.scales.par_chunks_mut(chunk_blocks))
            .zip(self.corrections.par_chunks_mut(chunk_blocks))
            .for_each(|(((values, codes), scales), corrections)| {
                Part {
                    values,
                    codes,
                    scales,
                    corrections,
                }
                .round()
            });
    }
}

/// Whole blocks of values and where their codes, scales and corrections go.
struct Part<'a> {
    values: &'a [f32],
    codes: &'a mut [i8],
    scales: &'a mut [f32],
    corrections: &'a mut [i32],
}

impl Part<'_> {
    fn round(mut self) {
        #[cfg(target_arch = "x86_64")]
        if super::vector::has_avx512_vnni() {
            // SAFETY: the CPU has AVX-512 F, VL, BW and DQ (`has_avx512_vnni` checks them).
            unsafe { self.round_avx512() };
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if super::vector::has_avx2_fma_f16c() {
            // SAFETY: the CPU has AVX2 (checked).
            unsafe { self.round_avx2() };
            return;
        }
        self.round_blocks(0..self.scales.len());
    }

    /// The scalar path, for `blocks`.
    fn round_blocks(&mut self, blocks: std::ops::Range<usize>) {
        for b in blocks {
            let range = b * ROUNDED_BLOCK..(b + 1) * ROUNDED_BLOCK;
            let block = &self.values[range.clone()];
            let max = block.iter().fold(0.0f32, |max, x| max.max(x.abs()));
            let finite = block.iter().all(|x| x.is_finite());
            let inverse = if max > 0.0 && finite {
                127.0 / f64::from(max)
            } else {
                0.0
            };
            let codes = &mut self.codes[range];
            for (code, &x) in codes.iter_mut().zip(block) {
                *code = (f64::from(x) * inverse).round().clamp(-127.0, 127.0) as i8;
            }
            self.scales[b] = if finite { max / 127.0 } else { f32::NAN };
            self.corrections[b] = -128 * codes.iter().map(|&c| i32::from(c)).sum::<i32>();
        }
    }

    /// The vector path: the scalar path's arithmetic eight f64 lanes at a time; blocks that are
    /// not finite go through the scalar path.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, VL, BW and DQ.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
    unsafe fn round_avx512(&mut self) {
        use std::arch::x86_64::*;
        let magnitude = _mm512_set1_ps(f32::from_bits(0x7fff_ffff));
        let largest = _mm512_set1_ps(f32::MAX);
        let half = _mm512_set1_pd(0.5);
        let sign = _mm512_set1_pd(-0.0);
        assert!(
            self.values.len() == self.codes.len()
                && self.codes.len() == self.scales.len() * ROUNDED_BLOCK
        );
        for b in 0..self.scales.len() {
            let at = b * ROUNDED_BLOCK;
            // SAFETY: block `b` is inside `values` (asserted above).
            let halves = unsafe {
                [
                    _mm512_loadu_ps(self.values.as_ptr().add(at)),
                    _mm512_loadu_ps(self.values.as_ptr().add(at + 16)),
                ]
            };
            let abs = halves.map(|h| _mm512_and_ps(h, magnitude));
            // Ordered comparisons: false for NaN and for infinities.
            let finite = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(abs[0], largest)
                & _mm512_cmp_ps_mask::<_CMP_LE_OQ>(abs[1], largest);
            if finite != 0xffff {
                self.round_blocks(b..b + 1);
                continue;
            }
            let max = _mm512_reduce_max_ps(_mm512_max_ps(abs[0], abs[1]));
            let inverse = _mm512_set1_pd(if max > 0.0 {
                127.0 / f64::from(max)
            } else {
                0.0
            });
            let mut sum = _mm512_setzero_si512();
            for (h, &half_block) in halves.iter().enumerate() {
                for quarter in 0..2 {
                    let lanes = if quarter == 0 {
                        _mm512_castps512_ps256(half_block)
                    } else {
                        _mm512_extractf32x8_ps::<1>(half_block)
                    };
                    let product = _mm512_mul_pd(_mm512_cvtps_pd(lanes), inverse);
                    // Half away from zero: truncate `x + 0.5 sign(x)` (exact in f64 here).
                    let nudge = _mm512_or_pd(_mm512_and_pd(product, sign), half);
                    let rounded = _mm512_cvttpd_epi32(_mm512_add_pd(product, nudge));
                    let clamped = _mm256_max_epi32(
                        _mm256_min_epi32(rounded, _mm256_set1_epi32(127)),
                        _mm256_set1_epi32(-127),
                    );
                    sum = _mm512_add_epi32(sum, _mm512_cvtepi32_epi64(clamped));
                    let codes = _mm256_cvtepi32_epi8(clamped);
                    // SAFETY: 8 codes of block `b` (`codes` is as long as `values`).
                    unsafe {
                        _mm_storel_epi64(
                            self.codes
                                .as_mut_ptr()
                                .add(at + 16 * h + 8 * quarter)
                                .cast(),
                            codes,
                        )
                    };
                }
            }
            self.scales[b] = max / 127.0;
            self.corrections[b] = -128 * _mm512_reduce_add_epi64(sum) as i32;
        }
    }

    /// The vector path of CPUs with AVX2 and no AVX-512: [`Part::round_avx512`]'s arithmetic
    /// four f64 lanes at a time.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn round_avx2(&mut self) {
        use std::arch::x86_64::*;
        let magnitude = _mm256_set1_ps(f32::from_bits(0x7fff_ffff));
        let largest = _mm256_set1_ps(f32::MAX);
        let half = _mm256_set1_pd(0.5);
        let sign = _mm256_set1_pd(-0.0);
        assert!(
            self.values.len() == self.codes.len()
                && self.codes.len() == self.scales.len() * ROUNDED_BLOCK
        );
        for b in 0..self.scales.len() {
            let at = b * ROUNDED_BLOCK;
            // SAFETY: block `b` is inside `values` (asserted above).
            let eighths: [__m256; 4] = std::array::from_fn(|i| unsafe {
                _mm256_loadu_ps(self.values.as_ptr().add(at + 8 * i))
            });
            let abs = eighths.map(|e| _mm256_and_ps(e, magnitude));
            // Ordered comparisons: false for NaN and for infinities.
            let finite = abs
                .iter()
                .all(|&a| _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(a, largest)) == 0xff);
            if !finite {
                self.round_blocks(b..b + 1);
                continue;
            }
            let wide = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
            let narrow = _mm_max_ps(
                _mm256_castps256_ps128(wide),
                _mm256_extractf128_ps::<1>(wide),
            );
            let narrow = _mm_max_ps(narrow, _mm_movehl_ps(narrow, narrow));
            let max = _mm_cvtss_f32(_mm_max_ss(narrow, _mm_shuffle_ps::<1>(narrow, narrow)));
            let inverse = _mm256_set1_pd(if max > 0.0 {
                127.0 / f64::from(max)
            } else {
                0.0
            });
            let mut sum = _mm_setzero_si128();
            for (e, &eighth) in eighths.iter().enumerate() {
                for quarter in 0..2 {
                    let lanes = if quarter == 0 {
                        _mm256_castps256_ps128(eighth)
                    } else {
                        _mm256_extractf128_ps::<1>(eighth)
                    };
                    let product = _mm256_mul_pd(_mm256_cvtps_pd(lanes), inverse);
                    // Half away from zero: truncate `x + 0.5 sign(x)` (exact in f64 here).
                    let nudge = _mm256_or_pd(_mm256_and_pd(product, sign), half);
                    let rounded = _mm256_cvttpd_epi32(_mm256_add_pd(product, nudge));
                    let clamped = _mm_max_epi32(
                        _mm_min_epi32(rounded, _mm_set1_epi32(127)),
                        _mm_set1_epi32(-127),
                    );
                    sum = _mm_add_epi32(sum, clamped);
                    let bytes = _mm_packs_epi16(_mm_packs_epi32(clamped, clamped), clamped);
                    // SAFETY: 4 codes of block `b` (`codes` is as long as `values`).
                    unsafe {
                        self.codes
                            .as_mut_ptr()
                            .add(at + 8 * e + 4 * quarter)
                            .cast::<i32>()
                            .write_unaligned(_mm_cvtsi128_si32(bytes))
                    };
                }
            }
            let sum = _mm_add_epi32(sum, _mm_shuffle_epi32::<0b01_00_11_10>(sum));
            let sum = _mm_add_epi32(sum, _mm_shuffle_epi32::<0b10_11_00_01>(sum));
            self.scales[b] = max / 127.0;
            self.corrections[b] = -128 * _mm_cvtsi128_si32(sum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::flex::tensor::test_values;

    fn random(seed: u64, n: usize, scale: f32) -> Vec<f32> {
        test_values(n, seed, scale)
    }

    /// Blocks of random values, of zeros, with a tiny value, a NaN, an infinity and subnormal
    /// values (for which `127 / max` is beyond f32's range).
    fn awkward_blocks() -> Vec<f32> {
        let mut values = random(7, 6 * ROUNDED_BLOCK, 3.0);
        values[ROUNDED_BLOCK..2 * ROUNDED_BLOCK].fill(0.0);
        values[2 * ROUNDED_BLOCK + 5] = 1e-30;
        values[3 * ROUNDED_BLOCK + 7] = f32::NAN;
        values[4 * ROUNDED_BLOCK + 1] = f32::INFINITY;
        let subnormal = &mut values[5 * ROUNDED_BLOCK..6 * ROUNDED_BLOCK];
        subnormal.fill(0.0);
        subnormal[..3].copy_from_slice(&[-1e-39, 6e-40, 1e-39]);
        values
    }

    /// The rounding against f64: every value within half a step of its code (the step `max |x|
    /// / 127` of its block), codes in -127..=127, the shift's correction `-128 Σ codes`; a block
    /// of zeros rounds to zeros, a block with a NaN or an infinity gets a NaN scale.
    #[test]
    fn values_round_within_half_a_step_of_their_block() {
        let values = awkward_blocks();
        let mut rounded = RoundedRows::default();
        rounded.round(&values);
        assert_eq!(rounded.codes.len(), values.len());
        for (b, block) in values.chunks_exact(ROUNDED_BLOCK).enumerate().take(5) {
            let (scale, codes) = (rounded.scales[b], &rounded.codes[b * ROUNDED_BLOCK..]);
            let sum: i32 = codes[..ROUNDED_BLOCK].iter().map(|&c| i32::from(c)).sum();
            assert_eq!(rounded.corrections[b], -128 * sum);
            if block.iter().any(|v| !v.is_finite()) {
                assert!(scale.is_nan(), "block {b}");
                continue;
            }
            let max = block.iter().fold(0.0f64, |m, &v| m.max(f64::from(v).abs()));
            assert!(
                (f64::from(scale) - max / 127.0).abs() <= max * 1e-7,
                "block {b}"
            );
            for (&v, &c) in block.iter().zip(codes) {
                assert!((-127..=127).contains(&c));
                let error = (f64::from(v) - f64::from(c) * f64::from(scale)).abs();
                assert!(
                    error <= f64::from(scale) * (0.5 + 1e-6),
                    "block {b}: {v} -> {c}"
                );
            }
        }
        let subnormal = &rounded.codes[5 * ROUNDED_BLOCK..];
        assert_eq!(&subnormal[..4], &[-127, 76, 127, 0]);
        assert!(rounded.scales[5] > 0.0 && rounded.scales[5].is_finite());
        assert!(rounded.codes[ROUNDED_BLOCK..2 * ROUNDED_BLOCK]
            .iter()
            .all(|&c| c == 0));
        assert!(rounded.codes[2 * ROUNDED_BLOCK..3 * ROUNDED_BLOCK]
            .iter()
            .any(|&c| c != 0));
    }

    /// The vector path gives the scalar path's codes, scales and corrections bit for bit,
    /// including ties (values that are exact half steps) and the awkward blocks.
    #[test]
    fn the_vector_path_rounds_as_the_scalar_path() {
        let mut values = awkward_blocks();
        values.extend(random(3, 64 * ROUNDED_BLOCK, 40.0));
        // Ties: with max 127 the factor is 1, so x.5 values are exact half steps, both signs.
        let ties: Vec<f32> = (0..ROUNDED_BLOCK)
            .map(|i| [127.0, -126.5, 2.5, -3.5, 0.5, -0.5][i % 6])
            .collect();
        values.extend(ties);
        // Enough blocks for the pool's chunks, the last one partial.
        values.extend(random(5, 1500 * ROUNDED_BLOCK, 2.0));
        assert!(values.len() > PARALLEL_VALUES && !values.len().is_multiple_of(PARALLEL_VALUES));
        let blocks = values.len() / ROUNDED_BLOCK;
        // The rows rounded on the calling thread by `path`.
        let rounded_by = |path: fn(Part)| {
            let mut rows = RoundedRows::default();
            rows.codes.resize(values.len(), 0);
            rows.scales.resize(blocks, 0.0);
            rows.corrections.resize(blocks, 0);
            path(Part {
                values: &values,
                codes: &mut rows.codes,
                scales: &mut rows.scales,
                corrections: &mut rows.corrections,
            });
            rows
        };
        let scalar = rounded_by(|mut part| part.round_blocks(0..part.scales.len()));
        let mut vectors = vec![RoundedRows::default()];
        // The CPU's own path, over the pool's chunks.
        vectors[0].round(&values);
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::flex::vector::has_avx2_fma_f16c() {
            // SAFETY: the CPU has AVX2 (checked).
            vectors.push(rounded_by(|mut part| unsafe { part.round_avx2() }));
        }
        let bits = |s: &[f32]| s.iter().map(|s| s.to_bits()).collect::<Vec<_>>();
        for vector in &vectors {
            assert_eq!(vector.codes, scalar.codes);
            assert_eq!(vector.corrections, scalar.corrections);
            assert_eq!(bits(&vector.scales), bits(&scalar.scales));
        }
        let ties_end = (6 + 64 + 1) * ROUNDED_BLOCK;
        let tie_codes = &scalar.codes[ties_end - 6..ties_end];
        // The block's last six values: 2.5, -3.5, 0.5, -0.5, 127, -126.5.
        assert_eq!(tie_codes, &[3, -4, 1, -1, 127, -127]);
    }
}
