//! The integer products of [`super::integer_product`] with AVX2's byte products, the ones
//! llama.cpp uses on these CPUs: Q8_0 on CPUs with AVX2 and no AVX-512 VNNI (AMD Zen 2 and 3,
//! Intel before Ice Lake), the same arithmetic as the VNNI kernel in 256-bit registers; Q4_1 on
//! every CPU with AVX2.
//!
//! AVX2 multiplies bytes with `vpmaddubsw`: unsigned by signed, each pair of products summed
//! into 16 bits *with saturation*. To keep every pair exact, the unsigned operand is the
//! weight's magnitude and the signed one the row's code, `|x| <= 127`: Q8_0's codes are signed,
//! so the magnitude is `|w| <= 128` and the row's code takes the weight's sign (`vpsignb`), a
//! pair at most `2 · 128 · 127 = 32,512 < 2^15`; Q4_1's codes are already unsigned nibbles
//! (`q <= 15`, a pair at most 3,810) and go in as they are, with no sign step. `vpmaddwd` by
//! ones then adds each output's two pairs into 32 bits. Here:
//! - the weight is repacked a task's 16 outputs at a time, in two strips of 8 (one 256-bit
//!   register holds 4 consecutive codes of each of 8 outputs), Q4_1's nibbles widened to bytes
//!   in the order of their values (byte `j` of a block: values `j` and `j + 16`);
//! - a tile of up to [`TILE_ROWS`] rows x 16 outputs keeps 8 integer sums of one block in
//!   registers: per block, 8 groups of 4 codes, each code group of a row broadcast and
//!   multiplied with both strips (Q4_1's pair sums kept in 16 bits over the block, Q8_0's
//!   widened every group); at the block's end each integer sum (exact: at most `32 · 128 ·
//!   127`) is converted and added with the product of its two scales, and for Q4_1 the
//!   offset's share `m_w · (s_x · Σ code_x)` (`Σ code_x` from [`RoundedRows`]).
//!
//! # Contract
//! [`super::integer_product`]'s. For Q8_0 the float steps (the scales' product, one fused
//! multiply-add per block, blocks in order) are those of the VNNI kernel, so that the two give
//! the same bits (tested where both run).

use super::integer_product::{DisjointColumns, TileProducts};
use super::rounded_rows::{RoundedRows, ROUNDED_BLOCK};
use crate::block_weight::{block_params, BlockFormat, BlockWeight, BLOCK_VALUES};

/// Outputs of one strip: the 8 int32 lanes of a 256-bit register.
const STRIP: usize = 8;

/// Rows of a tile: 4 rows x 2 strips = 8 integer sums, with the strips' 4 weight registers, the
/// ones, a broadcast and a product inside the 16 vector registers (the f32 sums, touched once
/// a block, may live on the stack).
const TILE_ROWS: usize = 4;

/// Bytes of one block of a repacked strip: 32 codes of 8 outputs.
const STRIP_BLOCK_BYTES: usize = STRIP * BLOCK_VALUES;

/// Deliberate errors, which the tests must catch ([`super::mutants`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(any(test, feature = "kernel-mutants")), allow(dead_code))]
pub(super) enum Mutation {
    /// Q8_0: the weight's sign not given to the row's codes (products of magnitudes).
    SignDropped,
    /// Every block of a row scaled with the row's first scale.
    FirstRowScale,
    /// The last group of 4 codes of every block left out.
    LastGroupDropped,
    /// Q4_1: a byte's nibbles read in the wrong order (value `j` from the high nibble).
    NibblesSwapped,
    /// Q4_1: the offset's share left out.
    OffsetDropped,
}

#[cfg_attr(not(any(test, feature = "kernel-mutants")), allow(dead_code))]
impl Mutation {
    pub(super) const ALL: [Mutation; 5] = [
        Mutation::SignDropped,
        Mutation::FirstRowScale,
        Mutation::LastGroupDropped,
        Mutation::NibblesSwapped,
        Mutation::OffsetDropped,
    ];
}

/// The AVX2 form of the tile products.
pub(super) struct Avx2;

/// Two strips of 8 outputs repacked for `vpmaddubsw` (see the module docs).
pub(super) struct Packed {
    format: BlockFormat,
    /// `[strip][block][group of 4 codes][output][4]`: Q8_0's `|code|`, Q4_1's nibble (outputs
    /// past the matrix: 0).
    magnitudes: Vec<u8>,
    /// Q8_0 (empty for Q4_1), the same layout: the codes, whose signs go to the rows' codes
    /// (past the matrix: 0).
    codes: Vec<i8>,
    /// `[strip][block][output]`: the weight's f16 scales in f32 (0 past the matrix).
    scales: Vec<f32>,
    /// Q4_1 (empty for Q8_0), the same layout: the blocks' f16 offsets in f32.
    offsets: Vec<f32>,
    blocks: usize,
}

impl Default for Packed {
    fn default() -> Self {
        Self {
            format: BlockFormat::Q8_0,
            magnitudes: Vec::new(),
            codes: Vec::new(),
            scales: Vec::new(),
            offsets: Vec::new(),
            blocks: 0,
        }
    }
}

impl TileProducts for Avx2 {
    const OUTPUTS: usize = 2 * STRIP;
    const KERNEL: &'static str = "integer_product_avx2";
    type Packed = Packed;
    type Mutation = Mutation;
    const MUTATIONS: &'static [Mutation] = &Mutation::ALL;

    fn repack(packed: &mut Packed, weight: &BlockWeight, first: usize, mutation: Option<Mutation>) {
        let [d_output, d_input] = weight.dims();
        let format = weight.format();
        let blocks = d_input / BLOCK_VALUES;
        let block_bytes = format.block_bytes();
        let signed = format == BlockFormat::Q8_0;
        let values = 2 * blocks * STRIP_BLOCK_BYTES;
        packed.format = format;
        packed.blocks = blocks;
        packed.magnitudes.clear();
        packed.magnitudes.resize(values, 0);
        packed.codes.clear();
        packed.codes.resize(if signed { values } else { 0 }, 0);
        packed.scales.clear();
        packed.scales.resize(2 * blocks * STRIP, 0.0);
        packed.offsets.clear();
        packed
            .offsets
            .resize(if signed { 0 } else { 2 * blocks * STRIP }, 0.0);
        let swapped = mutation == Some(Mutation::NibblesSwapped);
        for output in first..(first + Self::OUTPUTS).min(d_output) {
            let (strip, lane) = ((output - first) / STRIP, (output - first) % STRIP);
            let row = &weight.bytes()[output * weight.row_bytes()..][..weight.row_bytes()];
            for (b, block) in row.chunks_exact(block_bytes).enumerate() {
                let at = strip * blocks + b;
                let [scale, offset] = block_params(format, block);
                packed.scales[at * STRIP + lane] = scale;
                // Value `j`'s place: group `j / 4`, this output's lane, byte `j % 4`.
                let to = |j: usize| at * STRIP_BLOCK_BYTES + (j / 4) * 4 * STRIP + lane * 4 + j % 4;
                if signed {
                    for (j, &byte) in block[2..].iter().enumerate() {
                        let code = byte as i8;
                        packed.codes[to(j)] = code;
                        packed.magnitudes[to(j)] = code.unsigned_abs();
                    }
                } else {
                    packed.offsets[at * STRIP + lane] = offset;
                    let half = BLOCK_VALUES / 2;
                    for (j, &byte) in block[4..].iter().enumerate() {
                        let (low, high) = (byte & 0x0f, byte >> 4);
                        let (first, second) = if swapped { (high, low) } else { (low, high) };
                        packed.magnitudes[to(j)] = first;
                        packed.magnitudes[to(j + half)] = second;
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn multiply(
        packed: &Packed,
        rounded: &RoundedRows,
        out: &DisjointColumns,
        first_output: usize,
        d_input: usize,
        mutation: Option<Mutation>,
    ) {
        // SAFETY: as the caller's.
        unsafe { multiply_tile_columns(packed, rounded, out, first_output, d_input, mutation) }
    }
}

/// Columns `first_output..+16` of every row: the rows in tiles of [`TILE_ROWS`], then the rest.
///
/// # Safety
/// As [`multiply_tile`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn multiply_tile_columns(
    packed: &Packed,
    rounded: &RoundedRows,
    out: &DisjointColumns,
    first_output: usize,
    d_input: usize,
    mutation: Option<Mutation>,
) {
    /// The tile of `$rows` rows from `$first_row`.
    macro_rules! tile {
        ($rows:expr, $first_row:expr) => {
            // SAFETY: as the caller's; `$first_row + $rows <= out.rows` below.
            unsafe {
                multiply_tile::<$rows>(
                    packed,
                    rounded,
                    out,
                    $first_row,
                    first_output,
                    d_input,
                    mutation,
                )
            }
        };
    }
    let full_tiles = out.rows / TILE_ROWS;
    for t in 0..full_tiles {
        tile!(TILE_ROWS, t * TILE_ROWS);
    }
    let first_row = full_tiles * TILE_ROWS;
    match out.rows - first_row {
        0 => {}
        1 => tile!(1, first_row),
        2 => tile!(2, first_row),
        _ => tile!(3, first_row),
    }
}

/// Rows `first_row..first_row + R`, outputs `first_output..+16` (those that exist).
///
/// # Safety
/// The CPU has AVX2 and FMA; `packed` holds the tile's outputs; `rounded` holds `out.rows` rows
/// of `d_input` values, `first_row + R <= out.rows`; no other thread writes these outputs'
/// columns of `out`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn multiply_tile<const R: usize>(
    packed: &Packed,
    rounded: &RoundedRows,
    out: &DisjointColumns,
    first_row: usize,
    first_output: usize,
    d_input: usize,
    mutation: Option<Mutation>,
) {
    use std::arch::x86_64::*;
    let blocks = packed.blocks;
    debug_assert_eq!(blocks * ROUNDED_BLOCK, d_input);
    debug_assert!(first_row + R <= out.rows);
    let groups = if mutation == Some(Mutation::LastGroupDropped) {
        ROUNDED_BLOCK / 4 - 1
    } else {
        ROUNDED_BLOCK / 4
    };
    // Q8_0 reads the weight's signs (and gives them to the rows' codes unless mutated); Q4_1
    // has none and adds its offsets' share.
    let has_signs = packed.format == BlockFormat::Q8_0;
    let signed = has_signs && mutation != Some(Mutation::SignDropped);
    let offsets = !has_signs && mutation != Some(Mutation::OffsetDropped);
    let codes = rounded.codes.as_ptr().cast::<u8>();
    let ones = _mm256_set1_epi16(1);
    let mut sums = [[_mm256_setzero_ps(); 2]; R];
    for b in 0..blocks {
        let mut integer = [[_mm256_setzero_si256(); 2]; R];
        // Q4_1's pair sums (at most 2 · 15 · 127 = 3,810) add up in 16 bits over a whole block
        // (8 groups: 30,480 < 2^15) and are widened once, at its end; Q8_0's (up to 32,512)
        // are widened every group.
        let mut pairs = [[_mm256_setzero_si256(); 2]; R];
        let at = [0, 1].map(|s| (s * blocks + b) * STRIP_BLOCK_BYTES);
        for group in 0..groups {
            // SAFETY: group `group` of each strip's block (32 bytes of the 256 a block holds;
            // `codes` has them where `has_signs`).
            let (magnitude, sign) = unsafe {
                let magnitude = at.map(|at| {
                    _mm256_loadu_si256(packed.magnitudes.as_ptr().add(at + group * 32).cast())
                });
                let sign = if has_signs {
                    at.map(|at| {
                        _mm256_loadu_si256(packed.codes.as_ptr().add(at + group * 32).cast())
                    })
                } else {
                    magnitude
                };
                (magnitude, sign)
            };
            for r in 0..R {
                // SAFETY: codes `4 group..4 group + 4` of row `first_row + r`'s block `b`.
                let four = unsafe {
                    codes
                        .add((first_row + r) * d_input + b * ROUNDED_BLOCK + 4 * group)
                        .cast::<i32>()
                        .read_unaligned()
                };
                let x = _mm256_set1_epi32(four);
                for s in 0..2 {
                    if has_signs {
                        let x = if signed {
                            _mm256_sign_epi8(x, sign[s])
                        } else {
                            x
                        };
                        let pairs = _mm256_maddubs_epi16(magnitude[s], x);
                        integer[r][s] =
                            _mm256_add_epi32(integer[r][s], _mm256_madd_epi16(pairs, ones));
                    } else {
                        pairs[r][s] =
                            _mm256_add_epi16(pairs[r][s], _mm256_maddubs_epi16(magnitude[s], x));
                    }
                }
            }
        }
        if !has_signs {
            for (integer, pairs) in integer.iter_mut().zip(&pairs) {
                for s in 0..2 {
                    integer[s] = _mm256_madd_epi16(pairs[s], ones);
                }
            }
        }
        // SAFETY: the two strips' scales of block `b` (8 each).
        let weight_scales = unsafe {
            [0, 1].map(|s| _mm256_loadu_ps(packed.scales.as_ptr().add((s * blocks + b) * STRIP)))
        };
        let scale_block = if mutation == Some(Mutation::FirstRowScale) {
            0
        } else {
            b
        };
        // SAFETY: the two strips' offsets of block `b` (8 each) where `offsets` (Q4_1).
        let weight_offsets = offsets.then(|| unsafe {
            [0, 1].map(|s| _mm256_loadu_ps(packed.offsets.as_ptr().add((s * blocks + b) * STRIP)))
        });
        for (r, (sums, integer)) in sums.iter_mut().zip(&integer).enumerate() {
            let row_block = (first_row + r) * blocks;
            let row_scale = rounded.scales[row_block + scale_block];
            let x_scale = _mm256_set1_ps(row_scale);
            for s in 0..2 {
                let scale = _mm256_mul_ps(weight_scales[s], x_scale);
                sums[s] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(integer[s]), scale, sums[s]);
            }
            if let Some(weight_offsets) = weight_offsets {
                // `Σ x ≈ s_x · Σ code_x`, in f32 (the code sum, at most 32 · 127, is exact).
                let x_sum = _mm256_set1_ps(row_scale * rounded.code_sum(row_block + b) as f32);
                for s in 0..2 {
                    sums[s] = _mm256_fmadd_ps(weight_offsets[s], x_sum, sums[s]);
                }
            }
        }
    }
    for (r, sums) in sums.iter().enumerate() {
        for (s, &sum) in sums.iter().enumerate() {
            let column = first_output + s * STRIP;
            if column >= out.d_output {
                continue;
            }
            let lanes = (out.d_output - column).min(STRIP);
            // SAFETY: row `first_row + r`, the strip's columns that exist; this task's alone.
            unsafe {
                let to = out.y.add((first_row + r) * out.d_output + column);
                if lanes == STRIP {
                    _mm256_storeu_ps(to, sum);
                } else {
                    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                    let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes as i32), lane);
                    _mm256_maskstore_ps(to, mask, sum);
                }
            }
        }
    }
}
