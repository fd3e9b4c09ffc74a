//! Attention of a few query rows read against keys and values in place: the decode steps and
//! short chunks of [`attention`](super::attention) .
//!
//! A decode step's attention is a stream of the cache: each key and value row comes from memory
//! once and serves a handful of query rows (one head, or a group's heads stacked). Its speed is
//! what the stream gets, on two conditions (measured in docs/benchmarks.md):
//!
//! - the arithmetic per key stays below the stream: the dot products of [`KEY_BLOCK`] keys are
//!   reduced together by one tree of horizontal adds (a dot product reduced on its own costs as
//!   much as its multiplications), and a row's outputs accumulate in registers, not in memory;
//! - the stream is requested ahead: with a few multiply-adds per loaded value the CPU's own
//!   prefetcher falls behind, so the rows [`PREFETCH_ROWS`] ahead are requested explicitly. The
//!   values are added in blocks of [`VALUE_BLOCK`] keys: the first query row brings a block in,
//!   the others re-read it from the first-level cache while the next block is on its way.
//!
//! # Contract
//! [`few_row_attention`] writes, for each query row `r` (already scaled), `softmax(q_r kᵀ) v`
//! over the first `visible(r)` keys (less those `valid` marks `false`, if given) into
//! `out[r * width..][..width]`; `visible` never exceeds the
//! key count, and the last row sees every key. `scores` is the caller's scratch space. The sums
//! are in another order than the reference's: results agree to f32 rounding.

use super::softmax::softmax_prefix_portable;
use super::strided::Rows;
use super::vector::{dot, KernelElement};
#[cfg(target_arch = "x86_64")]
use super::vector::{has_avx2_fma_f16c, lane_sums_of_eight, prefetch};

/// Keys whose scores the vector path computes and reduces together (one per lane of an AVX
/// register).
const KEY_BLOCK: usize = 8;

/// Keys added to the outputs of every row before the next block: 16 KiB of values at a head
/// size of 64, well inside the first-level cache.
const VALUE_BLOCK: usize = 64;

/// How far ahead of the key (or value) row being used the kernel asks for rows: about the
/// bytes in flight that cover the memory's latency at this stream's speed (measured: batch-8
/// decode attention of SmolLM2's shape, 24-26 GB/s without, 33-37 with 32 to 128 rows ahead,
/// 64 kept).
const PREFETCH_ROWS: usize = 64;

/// Output values (8 AVX vectors) one pass over the values accumulates in registers.
const OUTPUT_SLAB: usize = 64;

/// A task thread's buffers, reused from task to task.
#[derive(Default)]
pub(crate) struct FewRowScratch {
    /// `[rows, keys]` scores, then softmax weights (also the f32 gemm path's scores).
    pub(crate) scores: Vec<f32>,
    /// `[rows, width]` queries in f32.
    queries: Vec<f32>,
    /// `[rows, width]` outputs in f32, rounded into the output's element type at the end.
    out: Vec<f32>,
}

/// See the module docs. The queries and the output are of one element type `Q`, the keys and
/// values of another or the same, `E` (an f32 model reading an f16 cache in place): the queries
/// are widened to f32 once, the key and value rows as they are read.
pub(crate) fn few_row_attention<Q: KernelElement, E: KernelElement>(
    queries: &Rows<Q>,
    keys: &Rows<E>,
    values: &Rows<E>,
    visible: &dyn Fn(usize) -> usize,
    valid: Option<&[bool]>,
    scratch: &mut FewRowScratch,
    out: &mut [Q],
) {
    let (rows, key_count, width) = (queries.count, keys.count, queries.width);
    let FewRowScratch {
        scores,
        queries: q,
        out: sums,
    } = scratch;
    q.clear();
    q.resize(rows * width, 0.0);
    for (r, q) in q.chunks_exact_mut(width).enumerate() {
        Q::widen(queries.row(r), q);
    }
    scores.clear();
    scores.resize(rows * key_count, 0.0);
    sums.clear();
    sums.resize(rows * width, 0.0);
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma_f16c() {
        // SAFETY: the CPU has the features the function is compiled for (checked above).
        unsafe { attend_avx2(q, width, keys, values, visible, valid, (scores, sums)) };
        return Q::narrow(sums, out);
    }
    attend_portable(q, width, keys, values, visible, valid, (scores, sums));
    Q::narrow(sums, out);
}

/// `sums` (`[rows, width]`) for the f32 queries `q`, through the vector path when the width is
/// whole vectors.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_avx2<E: KernelElement>(
    q: &[f32],
    width: usize,
    keys: &Rows<E>,
    values: &Rows<E>,
    visible: &dyn Fn(usize) -> usize,
    valid: Option<&[bool]>,
    (scores, sums): (&mut [f32], &mut [f32]),
) {
    if !width.is_multiple_of(8) {
        return attend_portable(q, width, keys, values, visible, valid, (scores, sums));
    }
    // SAFETY: the features are this function's; the width is whole vectors (checked above).
    unsafe {
        scores_avx2(q, width, keys, scores);
        softmax_rows(scores, keys.count, visible, valid);
        weighted_values_avx2(values, visible, scores, sums);
    }
}

/// `sums` (`[rows, width]`) in plain loops, for CPUs without the vector path's features and
/// widths that are not whole vectors.
#[inline(always)]
fn attend_portable<E: KernelElement>(
    q: &[f32],
    width: usize,
    keys: &Rows<E>,
    values: &Rows<E>,
    visible: &dyn Fn(usize) -> usize,
    valid: Option<&[bool]>,
    (scores, sums): (&mut [f32], &mut [f32]),
) {
    let key_count = keys.count;
    for j in 0..key_count {
        let key = keys.row(j);
        for (r, q) in q.chunks_exact(width).enumerate() {
            scores[r * key_count + j] = dot(key, q);
        }
    }
    softmax_rows(scores, key_count, visible, valid);
    for (r, sums) in sums.chunks_exact_mut(width).enumerate() {
        let weights = &scores[r * key_count..][..visible(r)];
        for (j, &weight) in weights.iter().enumerate() {
            for (o, x) in sums.iter_mut().zip(values.row(j)) {
                *o = x.to_f32().mul_add(weight, *o);
            }
        }
    }
}

/// Each row of `scores` (`key_count` values) softmaxed over its visible keys, the slots that
/// `valid` marks `false` weighted 0.
#[inline(always)]
fn softmax_rows(
    scores: &mut [f32],
    key_count: usize,
    visible: &dyn Fn(usize) -> usize,
    valid: Option<&[bool]>,
) {
    for (r, row) in scores.chunks_exact_mut(key_count).enumerate() {
        softmax_prefix_portable(row, visible(r), valid);
    }
}

/// `scores[r * key_count + j] = q_r · k_j` for every query row and key.
///
/// # Safety
/// The CPU has AVX2 and FMA; the rows' width is a multiple of 8; `scores` holds `rows *
/// key_count` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_avx2<E: KernelElement>(
    queries: &[f32],
    width: usize,
    keys: &Rows<E>,
    scores: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (rows, key_count) = (queries.len() / width, keys.count);
    let whole_blocks = key_count - key_count % KEY_BLOCK;
    for first in (0..whole_blocks).step_by(KEY_BLOCK) {
        if first + PREFETCH_ROWS + KEY_BLOCK <= key_count {
            for j in first + PREFETCH_ROWS..first + PREFETCH_ROWS + KEY_BLOCK {
                prefetch(keys.row(j));
            }
        }
        let block: [*const E; KEY_BLOCK] = std::array::from_fn(|i| keys.row(first + i).as_ptr());
        for r in 0..rows {
            let query = queries[r * width..][..width].as_ptr();
            // SAFETY: every pointer addresses `width` values (`Rows::row`), `c + 8 <= width`
            // (whole vectors), and the block's 8 sums land inside `scores` row `r`.
            unsafe {
                let mut sums = [_mm256_setzero_ps(); KEY_BLOCK];
                for c in (0..width).step_by(8) {
                    let q = _mm256_loadu_ps(query.add(c));
                    for (sum, key) in sums.iter_mut().zip(&block) {
                        *sum = _mm256_fmadd_ps(q, E::load8(key.add(c)), *sum);
                    }
                }
                let total = lane_sums_of_eight(sums);
                _mm256_storeu_ps(
                    scores[r * key_count + first..][..KEY_BLOCK].as_mut_ptr(),
                    total,
                );
            }
        }
    }
    for j in whole_blocks..key_count {
        let key = keys.row(j);
        for r in 0..rows {
            scores[r * key_count + j] = dot(key, &queries[r * width..][..width]);
        }
    }
}

/// `out_r = Σ_j weights[r, j] v_j` over each row's visible keys, `weights` the softmaxed scores.
///
/// # Safety
/// The CPU has AVX2 and FMA; the rows' width is a multiple of 8; `out` holds `rows * width`
/// values and `weights` `rows * key_count`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn weighted_values_avx2<E: KernelElement>(
    values: &Rows<E>,
    visible: &dyn Fn(usize) -> usize,
    weights: &[f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    const VECTORS: usize = OUTPUT_SLAB / 8;
    let (key_count, width) = (values.count, values.width);
    for block in (0..key_count).step_by(VALUE_BLOCK) {
        for (r, out) in out.chunks_exact_mut(width).enumerate() {
            let seen = visible(r).min(block + VALUE_BLOCK);
            if seen <= block {
                continue;
            }
            let weights = &weights[r * key_count..][block..seen];
            for slab in (0..width).step_by(OUTPUT_SLAB) {
                let vectors = ((width - slab) / 8).min(VECTORS);
                let out = out[slab..][..vectors * 8].as_mut_ptr();
                // SAFETY: `out` addresses `vectors` whole vectors (the slice above), and so does
                // every value row from `slab` on (`width` values each).
                unsafe {
                    let mut sums = [_mm256_setzero_ps(); VECTORS];
                    if block > 0 {
                        for (i, sum) in sums.iter_mut().enumerate().take(vectors) {
                            *sum = _mm256_loadu_ps(out.add(i * 8));
                        }
                    }
                    for (j, &weight) in (block..).zip(weights) {
                        if r == 0 && slab == 0 && j + PREFETCH_ROWS < key_count {
                            prefetch(values.row(j + PREFETCH_ROWS));
                        }
                        let value = values.row(j)[slab..].as_ptr();
                        let weight = _mm256_set1_ps(weight);
                        // A whole slab unrolled (every head size that is a multiple of 64 takes
                        // only this branch); the last, narrower slab of other sizes below.
                        if vectors == VECTORS {
                            for (i, sum) in sums.iter_mut().enumerate() {
                                let v = E::load8(value.add(i * 8));
                                *sum = _mm256_fmadd_ps(weight, v, *sum);
                            }
                        } else {
                            for (i, sum) in sums.iter_mut().enumerate().take(vectors) {
                                let v = E::load8(value.add(i * 8));
                                *sum = _mm256_fmadd_ps(weight, v, *sum);
                            }
                        }
                    }
                    for (i, sum) in sums.iter().enumerate().take(vectors) {
                        _mm256_storeu_ps(out.add(i * 8), *sum);
                    }
                }
            }
        }
    }
}
