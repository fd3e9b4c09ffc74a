//! Products `x Wᵀ` of a prompt's rows with a Q8_0 or Q4_1 [`BlockWeight`] as 8-bit integer
//! products, on CPUs with AVX-512 VNNI (here, Q8_0) or AVX2 ([`super::integer_product_avx2`],
//! both formats): the way llama.cpp multiplies these weights.
//!
//! The float path for many rows ([`super::block_product`]'s panels) widens the weight and runs
//! the f32 matrix product, at about 300 GFLOP/s on the 2-core machine of docs/benchmarks.md
//! whatever the format; one VNNI instruction (`vpdpbusd`) does 64 multiply-adds of bytes, four
//! times an f32 FMA's 16. Here:
//! - the rows are rounded to 8 bits per block of 32 ([`RoundedRows`]: `x ≈ code · s`, `s = max
//!   |x| / 127`, as llama.cpp rounds activations for its q8_0 dot products);
//! - the weight is repacked, two strips of 16 outputs at a time (a task's share, a few tens of
//!   kilobytes that stay in cache), so that one 512-bit register holds 4 consecutive codes of
//!   each of 16 outputs, shifted to unsigned bytes (`w ^ 0x80`) for the instruction;
//! - a tile of up to [`TILE_ROWS`] rows x 32 outputs keeps 12 integer sums of one block and 12
//!   f32 sums in registers: per block, 8 groups of 4 codes, each code group of a row broadcast
//!   and multiplied with both strips' registers; at the block's end each integer sum (exact:
//!   at most 32 x 127 x 255 before the shift's correction, which starts the sum) is converted
//!   and added with the product of its two scales.
//!
//! # Contract
//! `x Wᵀ` for `x` rounded per block as [`RoundedRows`] rounds it: for each output, the sum over
//! blocks of `s_x · s_w · Σ code_x · code_w` (Q4_1: plus its offset's share, `m_w · s_x · Σ
//! code_x`; the integer sums exact, the rest in f32), so that it agrees with the f64 product of
//! the *rounded* rows and the dequantized weight to f32 rounding. Against the unrounded rows it
//! differs by the rounding of `x` (at most `s_x / 2` a value), the error llama.cpp's Q8_0 and
//! Q4_1 products have. Taken by [`super::block_product`] for products of more than
//! [`MAX_STREAMED_ROWS`] rows where [`takes_integer_product`] says so: only for matrices that
//! ask for it ([`BlockWeight::with_int8_prompt_products`], off by default, since it changes
//! results). Q4_1 takes the AVX2 kernel on every CPU that has AVX2, VNNI ones included (its
//! codes are unsigned, so AVX2's byte product needs no sign step there; a VNNI form is not
//! written). `KV_ROUTING_KERNELS=avx2` makes a VNNI CPU take the AVX2 kernel for Q8_0 too (the
//! same bits), `=portable` turns both off (the f32 panels).

use rayon::prelude::*;

use super::block_product::MAX_STREAMED_ROWS;
use super::integer_product_avx2::Avx2;
use super::rounded_rows::{RoundedRows, ROUNDED_BLOCK};
use super::vector::{has_avx2_fma_f16c, has_avx512_vnni};
use crate::block_weight::{block_params, BlockFormat, BlockWeight, BLOCK_VALUES};

/// Outputs of one strip: the 16 int32 lanes of a 512-bit register.
const STRIP: usize = 16;

/// Outputs of a task's tile: two strips.
const TILE_OUTPUTS: usize = 2 * STRIP;

/// Rows of a tile: 6 rows x 2 strips = 12 integer and 12 f32 sums, with the two weight
/// registers and a broadcast inside the 32 vector registers.
const TILE_ROWS: usize = 6;

/// Bytes of one block of a repacked strip: 32 codes of 16 outputs.
const STRIP_BLOCK_BYTES: usize = STRIP * BLOCK_VALUES;

/// Deliberate errors, which the tests must catch ([`super::mutants`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(any(test, feature = "kernel-mutants")), allow(dead_code))]
enum Mutation {
    /// The weights' shift to unsigned bytes left in the sums.
    UncorrectedShift,
    /// Every block of a row scaled with the row's first scale.
    FirstRowScale,
    /// The last group of 4 codes of every block left out.
    LastGroupDropped,
}

#[cfg_attr(not(any(test, feature = "kernel-mutants")), allow(dead_code))]
impl Mutation {
    const ALL: [Mutation; 3] = [
        Mutation::UncorrectedShift,
        Mutation::FirstRowScale,
        Mutation::LastGroupDropped,
    ];
}

/// The integer instructions a CPU multiplies the codes with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IntegerKernel {
    /// AVX-512 VNNI's `vpdpbusd`: 64 byte products an instruction (this module).
    Vnni,
    /// AVX2's `vpmaddubsw` and `vpmaddwd` ([`super::integer_product_avx2`]).
    Avx2,
}

impl IntegerKernel {
    /// The fastest kernel this CPU runs (as [`super::vector::PORTABLE_KERNELS_VARIABLE`]
    /// allows), if any.
    pub(crate) fn detected() -> Option<Self> {
        if has_avx512_vnni() {
            Some(Self::Vnni)
        } else if has_avx2_fma_f16c() {
            Some(Self::Avx2)
        } else {
            None
        }
    }

    /// The fastest kernel this CPU runs for `format`'s blocks: [`IntegerKernel::detected`] for
    /// Q8_0, AVX2 for Q4_1 (see the module docs).
    pub(crate) fn for_format(format: BlockFormat) -> Option<Self> {
        match format {
            BlockFormat::Q8_0 => Self::detected(),
            BlockFormat::Q4_1 => has_avx2_fma_f16c().then_some(Self::Avx2),
        }
    }

    /// Whether the kernel multiplies `format`'s blocks.
    fn multiplies(self, format: BlockFormat) -> bool {
        match self {
            Self::Vnni => format == BlockFormat::Q8_0,
            Self::Avx2 => true,
        }
    }
}

/// Whether a product of `rows` rows with `weight` takes the integer path: asked for
/// ([`BlockWeight::with_int8_prompt_products`]), more rows than a decode step streams, a CPU
/// with integer products for the weight's format ([`IntegerKernel::for_format`]).
pub(crate) fn takes_integer_product(weight: &BlockWeight, rows: usize) -> bool {
    weight.int8_prompt_products()
        && rows > MAX_STREAMED_ROWS
        && IntegerKernel::for_format(weight.format()).is_some()
}

/// `[rows, out]` f32: `x Wᵀ` with `x` (`[rows, in]`) rounded per block (see the module docs),
/// on the CPU's fastest kernel for the weight's format. Call only where
/// [`takes_integer_product`] holds.
pub(crate) fn integer_product(blocks: &BlockWeight, x: &[f32], rows: usize) -> Vec<f32> {
    let kernel = IntegerKernel::for_format(blocks.format()).expect("a CPU with integer products");
    integer_product_on(kernel, blocks, x, rows)
}

/// [`integer_product`] on `kernel`, which the CPU must run.
pub(crate) fn integer_product_on(
    kernel: IntegerKernel,
    blocks: &BlockWeight,
    x: &[f32],
    rows: usize,
) -> Vec<f32> {
    let runs = match kernel {
        IntegerKernel::Vnni => has_avx512_vnni(),
        IntegerKernel::Avx2 => has_avx2_fma_f16c(),
    };
    assert!(
        kernel.multiplies(blocks.format()) && runs,
        "the {kernel:?} integer product of {} weights on a CPU that runs it",
        blocks.format()
    );
    let [_, d_input] = blocks.dims();
    assert_eq!(x.len(), rows * d_input, "x is [rows, in]");
    let mut rounded = RoundedRows::default();
    rounded.round(x);
    match kernel {
        IntegerKernel::Vnni => product_in_tiles::<Vnni>(blocks, &rounded, rows),
        IntegerKernel::Avx2 => product_in_tiles::<Avx2>(blocks, &rounded, rows),
    }
}

/// A CPU's form of the products: how a task's outputs are repacked and multiplied.
pub(super) trait TileProducts {
    /// Outputs of a task's tile.
    const OUTPUTS: usize;
    /// The kernel's name for [`super::mutants`].
    const KERNEL: &'static str;
    /// A task's repacked outputs.
    type Packed: Default;
    /// The kernel's deliberate errors.
    type Mutation: Copy + std::fmt::Debug + Send + Sync + 'static;
    /// All of them.
    const MUTATIONS: &'static [Self::Mutation];

    /// Repacks outputs `first..first + OUTPUTS` of `weight` (those that exist).
    fn repack(
        packed: &mut Self::Packed,
        weight: &BlockWeight,
        first: usize,
        mutation: Option<Self::Mutation>,
    );

    /// Columns `first_output..first_output + OUTPUTS` (those below `out.d_output`) of every row.
    ///
    /// # Safety
    /// The CPU runs the kernel's instructions; `packed` holds those outputs (`repack`);
    /// `rounded` holds `out.rows` rows of `d_input` values; no other thread writes those
    /// columns of `out`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn multiply(
        packed: &Self::Packed,
        rounded: &RoundedRows,
        out: &DisjointColumns,
        first_output: usize,
        d_input: usize,
        mutation: Option<Self::Mutation>,
    );
}

/// The product over rayon's pool, a task per tile of `K::OUTPUTS` outputs.
fn product_in_tiles<K: TileProducts>(
    blocks: &BlockWeight,
    rounded: &RoundedRows,
    rows: usize,
) -> Vec<f32> {
    let [d_output, d_input] = blocks.dims();
    // Read on the calling thread: the tests choose a mutant per thread.
    let mutation = super::mutants::active(K::KERNEL, K::MUTATIONS);
    // Not zeroed: the tiles write every element (every row, every column below `d_output`).
    let mut y: Vec<f32> = Vec::with_capacity(rows * d_output);
    let out = DisjointColumns {
        y: y.as_mut_ptr(),
        rows,
        d_output,
    };
    (0..d_output.div_ceil(K::OUTPUTS))
        .into_par_iter()
        .for_each_init(K::Packed::default, |packed, tile| {
            let first_output = tile * K::OUTPUTS;
            K::repack(packed, blocks, first_output, mutation);
            // SAFETY: the CPU runs the kernel (asserted by `integer_product_on`); this task
            // alone writes the columns `first_output..first_output + K::OUTPUTS` of `y` (the
            // tiles are disjoint), `packed` holds those outputs' blocks, and `rounded` holds
            // `rows` rows of `d_input` values.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                K::multiply(packed, rounded, &out, first_output, d_input, mutation)
            };
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = (packed, rounded, &out, d_input);
                unreachable!("no integer products off x86_64 ({mutation:?})");
            }
        });
    // SAFETY: every element of the capacity was written above (see the comment on `y`).
    unsafe { y.set_len(rows * d_output) };
    y
}

/// The output `[rows, d_output]`, written by tasks that each own their columns.
pub(super) struct DisjointColumns {
    pub(super) y: *mut f32,
    pub(super) rows: usize,
    pub(super) d_output: usize,
}

// SAFETY: the tasks write disjoint columns of `y` (see `product_in_tiles`), which outlives them.
unsafe impl Sync for DisjointColumns {}

/// The AVX-512 VNNI form of the tile products (see the module docs).
struct Vnni;

impl TileProducts for Vnni {
    const OUTPUTS: usize = TILE_OUTPUTS;
    const KERNEL: &'static str = "integer_product";
    type Packed = Packed;
    type Mutation = Mutation;
    const MUTATIONS: &'static [Mutation] = &Mutation::ALL;

    fn repack(packed: &mut Packed, weight: &BlockWeight, first: usize, _: Option<Mutation>) {
        packed.repack(weight, first);
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
        // SAFETY: as the caller's (VNNI: asserted by `integer_product_on`).
        unsafe { multiply_tile_columns(packed, rounded, out, first_output, d_input, mutation) }
    }
}

/// Two strips of 16 outputs repacked for the instruction (see the module docs).
#[derive(Default)]
struct Packed {
    /// `[strip][block][group of 4 codes][output][4]`: `code ^ 0x80` (outputs past the matrix:
    /// `0x80`, the code 0).
    codes: Vec<u8>,
    /// `[strip][block][output]`: the weight's f16 scales in f32 (0 past the matrix).
    scales: Vec<f32>,
    blocks: usize,
}

impl Packed {
    /// Repacks outputs `first..first + 32` of `weight` (those that exist).
    fn repack(&mut self, weight: &BlockWeight, first: usize) {
        let [d_output, d_input] = weight.dims();
        let blocks = d_input / BLOCK_VALUES;
        let block_bytes = BlockFormat::Q8_0.block_bytes();
        self.blocks = blocks;
        self.codes.clear();
        self.codes.resize(2 * blocks * STRIP_BLOCK_BYTES, 0x80);
        self.scales.clear();
        self.scales.resize(2 * blocks * STRIP, 0.0);
        for output in first..(first + TILE_OUTPUTS).min(d_output) {
            let (strip, lane) = ((output - first) / STRIP, (output - first) % STRIP);
            let row = &weight.bytes()[output * weight.row_bytes()..][..weight.row_bytes()];
            for (b, block) in row.chunks_exact(block_bytes).enumerate() {
                let at = strip * blocks + b;
                self.scales[at * STRIP + lane] = block_params(BlockFormat::Q8_0, block)[0];
                let packed = &mut self.codes[at * STRIP_BLOCK_BYTES..][..STRIP_BLOCK_BYTES];
                for (group, codes) in block[2..].chunks_exact(4).enumerate() {
                    let to = &mut packed[group * 4 * STRIP + lane * 4..][..4];
                    for (to, &code) in to.iter_mut().zip(codes) {
                        *to = code ^ 0x80;
                    }
                }
            }
        }
    }
}

/// Columns `first_output..+32` of every row: the rows in tiles of [`TILE_ROWS`], then the rest.
///
/// # Safety
/// As [`multiply_tile`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx512vnni")]
unsafe fn multiply_tile_columns(
    packed: &Packed,
    rounded: &RoundedRows,
    out: &DisjointColumns,
    first_output: usize,
    d_input: usize,
    mutation: Option<Mutation>,
) {
    let full_tiles = out.rows / TILE_ROWS;
    for tile in 0..full_tiles {
        // SAFETY: as the caller's.
        unsafe {
            multiply_tile::<TILE_ROWS>(
                packed,
                rounded,
                out,
                tile * TILE_ROWS,
                first_output,
                d_input,
                mutation,
            )
        };
    }
    let first_row = full_tiles * TILE_ROWS;
    /// The tail's tile of `$rows` rows.
    macro_rules! tail {
        ($rows:literal) => {
            // SAFETY: as the caller's.
            unsafe {
                multiply_tile::<$rows>(
                    packed,
                    rounded,
                    out,
                    first_row,
                    first_output,
                    d_input,
                    mutation,
                )
            }
        };
    }
    match out.rows - first_row {
        0 => {}
        1 => tail!(1),
        2 => tail!(2),
        3 => tail!(3),
        4 => tail!(4),
        _ => tail!(5),
    }
}

/// Rows `first_row..first_row + R`, outputs `first_output..+32` (those that exist).
///
/// # Safety
/// The CPU has AVX-512 F/VL/BW/DQ and VNNI; `packed` holds the tile's outputs; `rounded` holds
/// `out.rows` rows of `d_input` values, `first_row + R <= out.rows`; no other thread writes
/// these outputs' columns of `out`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx512vnni")]
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
    let codes = rounded.codes.as_ptr().cast::<u8>();
    let mut sums = [[_mm512_setzero_ps(); 2]; R];
    for b in 0..blocks {
        let mut integer = [[_mm512_setzero_si512(); 2]; R];
        if mutation != Some(Mutation::UncorrectedShift) {
            for (r, integer) in integer.iter_mut().enumerate() {
                let correction = rounded.corrections[(first_row + r) * blocks + b];
                *integer = [_mm512_set1_epi32(correction); 2];
            }
        }
        // SAFETY: strip `s`'s block `b` is inside `packed.codes` (2 strips of `blocks`).
        let weight = unsafe {
            [0, 1].map(|s| {
                packed
                    .codes
                    .as_ptr()
                    .add((s * blocks + b) * STRIP_BLOCK_BYTES)
            })
        };
        for group in 0..groups {
            // SAFETY: group `group` of each strip's block (64 bytes of the 512 a block holds).
            let w = unsafe {
                [
                    _mm512_loadu_si512(weight[0].add(group * 64).cast()),
                    _mm512_loadu_si512(weight[1].add(group * 64).cast()),
                ]
            };
            for (r, integer) in integer.iter_mut().enumerate() {
                // SAFETY: codes `4 group..4 group + 4` of row `first_row + r`'s block `b`.
                let four = unsafe {
                    codes
                        .add((first_row + r) * d_input + b * ROUNDED_BLOCK + 4 * group)
                        .cast::<i32>()
                        .read_unaligned()
                };
                let x = _mm512_set1_epi32(four);
                integer[0] = _mm512_dpbusd_epi32(integer[0], w[0], x);
                integer[1] = _mm512_dpbusd_epi32(integer[1], w[1], x);
            }
        }
        // SAFETY: the two strips' scales of block `b` (16 each).
        let weight_scales = unsafe {
            [0, 1].map(|s| _mm512_loadu_ps(packed.scales.as_ptr().add((s * blocks + b) * STRIP)))
        };
        let scale_block = if mutation == Some(Mutation::FirstRowScale) {
            0
        } else {
            b
        };
        for (r, (sums, integer)) in sums.iter_mut().zip(&integer).enumerate() {
            let x_scale = _mm512_set1_ps(rounded.scales[(first_row + r) * blocks + scale_block]);
            for s in 0..2 {
                let scale = _mm512_mul_ps(weight_scales[s], x_scale);
                sums[s] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(integer[s]), scale, sums[s]);
            }
        }
    }
    for (r, sums) in sums.iter().enumerate() {
        for (s, &sum) in sums.iter().enumerate() {
            let column = first_output + s * STRIP;
            if column >= out.d_output {
                continue;
            }
            let mask: __mmask16 = if out.d_output - column >= STRIP {
                0xffff
            } else {
                (1u16 << (out.d_output - column)) - 1
            };
            // SAFETY: row `first_row + r`, the strip's columns that exist; this task's alone.
            unsafe {
                _mm512_mask_storeu_ps(
                    out.y.add((first_row + r) * out.d_output + column),
                    mask,
                    sum,
                )
            };
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::kernels::flex::mutants;
    use crate::kernels::flex::tensor::test_values as values;

    /// The product against f64 over the dequantized weight and the *rounded* rows, at f32's
    /// tolerance for sums of `in` terms; rows with a zero block and a NaN.
    fn checked(
        kernel: IntegerKernel,
        format: BlockFormat,
        [d_output, d_input]: [usize; 2],
        rows: usize,
    ) -> Result<(), String> {
        let weight = BlockWeight::quantize(
            format,
            [d_output, d_input],
            &values(d_output * d_input, 3, 1.0),
        )
        .unwrap()
        .with_int8_prompt_products(true);
        let mut x = values(rows * d_input, 11, 4.0);
        x[d_input..d_input + 32].fill(0.0);
        x[(rows - 1) * d_input + 3] = f32::NAN;
        matches_f64(kernel, &weight, &x, rows, Some(rows - 1))
    }

    /// [`checked`] for `weight` and `x`, whose row `nan_row` (if any) holds a NaN.
    fn matches_f64(
        kernel: IntegerKernel,
        weight: &BlockWeight,
        x: &[f32],
        rows: usize,
        nan_row: Option<usize>,
    ) -> Result<(), String> {
        let ([d_output, d_input], format) = (weight.dims(), weight.format());
        let y = integer_product_on(kernel, weight, x, rows);
        let mut rounded = RoundedRows::default();
        rounded.round(x);
        let blocks = d_input / ROUNDED_BLOCK;
        let x_rounded: Vec<f64> = (0..rows * d_input)
            .map(|i| f64::from(rounded.codes[i]) * f64::from(rounded.scales[i / ROUNDED_BLOCK]))
            .collect();
        let w = weight.dequantize();
        // Q4_1's offset of each weight value: the kernel sums `d q` and `m` apart, so its
        // rounding is that of sums of `|d q| + |m|`, which can exceed `|d q + m|`.
        let offsets: Vec<f64> = (0..d_output * d_input)
            .map(|i| {
                let (o, b) = (i / d_input, (i % d_input) / BLOCK_VALUES);
                let block = &weight.bytes()[o * weight.row_bytes()..][b * format.block_bytes()..];
                f64::from(block_params(format, block)[1])
            })
            .collect();
        for r in 0..rows {
            for o in 0..d_output {
                let got = y[r * d_output + o];
                if Some(r) == nan_row {
                    if !got.is_nan() {
                        return Err(format!("row {r} holds a NaN, y[{r}, {o}] = {got}"));
                    }
                    continue;
                }
                let (x, w) = (&x_rounded[r * d_input..], &w[o * d_input..]);
                let offsets = &offsets[o * d_input..];
                let expected: f64 = (0..d_input).map(|i| x[i] * f64::from(w[i])).sum();
                let magnitude: f64 = (0..d_input)
                    .map(|i| x[i].abs() * ((f64::from(w[i]) - offsets[i]).abs() + offsets[i].abs()))
                    .sum();
                let bound = magnitude * (blocks + 4) as f64 * 2f64.powi(-23) + 1e-6;
                if (f64::from(got) - expected).abs() > bound || got.is_nan() {
                    return Err(format!(
                        "{kernel:?} {format}, [{d_output}, {d_input}] x {rows} rows: y[{r}, {o}] = {got}, expected {expected} (bound {bound})"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The kernels this CPU runs, each with the formats it multiplies.
    fn kernels() -> Vec<(IntegerKernel, Vec<BlockFormat>)> {
        let mut kernels = Vec::new();
        if has_avx512_vnni() {
            kernels.push((IntegerKernel::Vnni, vec![BlockFormat::Q8_0]));
        }
        if has_avx2_fma_f16c() {
            kernels.push((
                IntegerKernel::Avx2,
                vec![BlockFormat::Q8_0, BlockFormat::Q4_1],
            ));
        }
        kernels
    }

    #[test]
    fn products_match_f64_on_the_rounded_rows() {
        // Outputs: less than a strip, a strip and a half, whole tiles; rows: a tile and a
        // tail of each length, blocks: one and several.
        for (kernel, formats) in kernels() {
            for format in formats {
                for rows in [9, 10, 11, 12, 13, 17] {
                    checked(kernel, format, [7, 32], rows).unwrap();
                    checked(kernel, format, [45, 96], rows).unwrap();
                }
                checked(kernel, format, [64, 576], 30).unwrap();
                checked(kernel, format, [100, 1536], 14).unwrap();
            }
        }
    }

    /// The largest integer sums each format can give stay exact: Q4_1 blocks of nibbles 15
    /// (one value at the block's minimum) and Q8_0 blocks of ±127/-128 codes, with rows of
    /// codes ±127 (Q4_1 keeps a block's pair sums in 16 bits: 8 · 2 · 15 · 127 = 30,480).
    #[test]
    fn the_largest_sums_stay_exact() {
        let [d_output, d_input, rows] = [16, 64, 9];
        let mut w = vec![1.0f32; d_output * d_input];
        for block in w.chunks_exact_mut(BLOCK_VALUES).skip(1).step_by(2) {
            block[0] = -1.0;
        }
        for (sign, x) in [(1.0f32, 0), (-1.0, 1)] {
            let x: Vec<f32> = (0..rows * d_input)
                .map(|i| if (i / d_input) % 2 == x { sign } else { -sign })
                .collect();
            for (kernel, formats) in kernels() {
                for format in formats {
                    let weight = BlockWeight::quantize(format, [d_output, d_input], &w)
                        .unwrap()
                        .with_int8_prompt_products(true);
                    matches_f64(kernel, &weight, &x, rows, None).unwrap();
                    let y = integer_product_on(kernel, &weight, &x, rows);
                    // Row 0's first output: a block of 1s (31 of 32 for Q4_1) times ±1s.
                    assert!(y[0].abs() > 60.0, "{kernel:?} {format}: {}", y[0]);
                }
            }
        }
    }

    #[test]
    fn each_format_takes_a_kernel_that_multiplies_it() {
        assert_eq!(
            IntegerKernel::for_format(BlockFormat::Q8_0),
            IntegerKernel::detected()
        );
        // Q4_1 has the AVX2 kernel only, VNNI CPUs included.
        assert_eq!(
            IntegerKernel::for_format(BlockFormat::Q4_1),
            has_avx2_fma_f16c().then_some(IntegerKernel::Avx2)
        );
        for format in [BlockFormat::Q8_0, BlockFormat::Q4_1] {
            if let Some(kernel) = IntegerKernel::for_format(format) {
                assert!(kernel.multiplies(format));
            }
        }
        assert!(!IntegerKernel::Vnni.multiplies(BlockFormat::Q4_1));
    }

    #[test]
    fn the_kernels_give_the_same_bits() {
        if !has_avx512_vnni() {
            return;
        }
        let weight = BlockWeight::quantize(BlockFormat::Q8_0, [45, 96], &values(45 * 96, 5, 1.0))
            .unwrap()
            .with_int8_prompt_products(true);
        let x = values(13 * 96, 7, 3.0);
        let [vnni, avx2] = [IntegerKernel::Vnni, IntegerKernel::Avx2]
            .map(|kernel| integer_product_on(kernel, &weight, &x, 13));
        let bits = |y: &[f32]| y.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&vnni), bits(&avx2));
    }

    #[test]
    fn every_mutation_fails_the_check() {
        if has_avx512_vnni() {
            let check = || checked(IntegerKernel::Vnni, BlockFormat::Q8_0, [45, 96], 13);
            let survivors = mutants::surviving(Vnni::KERNEL, Vnni::MUTATIONS, check);
            assert!(survivors.is_empty(), "VNNI: not caught: {survivors:?}");
        }
        if has_avx2_fma_f16c() {
            // Each mutation must fail for some format (Q8_0's sign, Q4_1's nibbles and
            // offsets exist in one format only).
            let check = || {
                checked(IntegerKernel::Avx2, BlockFormat::Q8_0, [45, 96], 13)?;
                checked(IntegerKernel::Avx2, BlockFormat::Q4_1, [45, 96], 13)
            };
            let survivors = mutants::surviving(Avx2::KERNEL, Avx2::MUTATIONS, check);
            assert!(survivors.is_empty(), "AVX2: not caught: {survivors:?}");
        }
    }
}
