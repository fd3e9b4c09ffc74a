//! Causal attention of a few query rows over keys/values in the int8 format
//! ([`crate::kv_quantization`]), read in place: the decode steps and short chunks of a model
//! serving from an int8 cache on flex.
//!
//! A decode step streams the cache once. Widening the history to floats first (the generic
//! path) writes and reads four bytes a value on top of the one it streams; here the codes are
//! widened in registers (sign-extended and converted eight at a time) and multiplied as they
//! arrive: the scores of eight keys at a time, each block's dot product scaled once; then the
//! weighted values, each weight scaled once per block. One task per (sequence, key/value head)
//! holds every query row of its group (`groups x seq_len` rows); in a decode step of up to 3
//! rows each widened key vector and each widened value vector serves them all (SmolLM2's 3
//! query heads per key/value head: the codes are widened once, not three times). The scales of
//! a task are widened to f32 once (a half-precision scale converted at each use cost more than
//! the codes' arithmetic).
//!
//! **Integer scores.** On CPUs with AVX-512 VNNI (integer dot products of bytes), a decode
//! step's scores over blocks of 32 are integer products: each query row is rounded to 8 bits per
//! block of 32 (`code = round(q / s)`, `s = max |q| / 127`, as llama.cpp rounds the queries of
//! its q8_0 dot products) and one instruction multiplies 64 query codes by 64 key codes and sums
//! them in fours; each block's integer sum is scaled once by its query and key scales. This
//! changes the scores by the queries' rounding (at most `s / 2` a value): the one place where
//! this kernel computes something other than attention over the dequantized rows, so the tests
//! compare it with attention over the dequantized rows *and* the rounded queries
//! ([`RoundedRows`], whose own tests check the rounding against its bound). Prompts (the float
//! path) and CPUs without VNNI keep f32 queries; `KV_ROUTING_KERNELS=avx2` turns it off.
//! Measured in docs/benchmarks.md ("An int8 KV cache").
//!
//! # Contract
//! [`causal_attention`] computes, for queries already scaled, `softmax(q kᵀ + causal) v` with
//! `k` and `v` the dequantized rows `codes x scale` of their block, the queries the last
//! `seq_len` of the `kv_len` key slots, and the slots `key_valid` marks `false` hidden. It
//! returns `None` (the caller widens and takes the float path) for any other backend, element
//! types other than f32/f16/bf16 queries with scales of the same type and `i8` codes, layouts
//! whose rows are not contiguous, and tasks of more than [`MAX_TASK_ROWS`] query rows (a long
//! prefill, whose products the float path's gemm does better). Sums are in f32 in another order
//! than a reference's: results agree to f32 rounding.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor};
use burn_flex::FlexTensor;
use half::{bf16, f16};
use rayon::prelude::*;

use super::rounded_rows::{RoundedRows, ROUNDED_BLOCK};
use super::softmax::softmax_prefix_portable;
use super::strided::{Operand, Rows};
use super::tensor::{flex_float, flex_int8, from_flex};
use super::vector::{has_avx2_fma_f16c, has_avx512_registers, has_avx512_vnni, KernelElement};
#[cfg(target_arch = "x86_64")]
use super::vector::{lane_sums_of_eight, prefetch, widen_avx2};
use crate::kv_quantization::QuantizedRows;

/// Query rows one task holds at most (a decode step of a group: `groups` rows; a chunk:
/// `groups x seq_len`). Beyond it the step is a prefill, left to the float path.
pub(crate) const MAX_TASK_ROWS: usize = 32;

/// Key or value rows the portable path widens at a time (16 KiB of f32 at a head size of 64,
/// inside the first-level cache), and the vector path's group of value rows per query row.
const CHUNK: usize = 64;

/// Keys whose scores [`stacked_scores_avx2`] sums together: with 3 rows, 12 sums, which leave
/// room in the 16 vector registers for the widened key and its scale.
const STACKED_KEYS: usize = 4;

/// How far ahead of the row in use the vector path asks for code rows (as
/// [`few_row_attention`](super::few_row_attention)'s).
const PREFETCH_ROWS: usize = 64;

/// Deliberate errors of this kernel, which its tests must catch (see
/// [`super::mutants`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Int8Mutation {
    /// Every block of a row widened with the row's first scale.
    FirstScaleOfRow,
    /// Codes read as unsigned bytes.
    UnsignedCodes,
    /// Integer scores: the keys' shift to unsigned bytes left in the sums.
    UncorrectedKeyShift,
    /// Integer scores: every block of a query row scaled with the row's first scale.
    FirstQueryScaleOfRow,
}

impl Int8Mutation {
    const ALL: [Self; 4] = [
        Self::FirstScaleOfRow,
        Self::UnsignedCodes,
        Self::UncorrectedKeyShift,
        Self::FirstQueryScaleOfRow,
    ];

    /// Whether the mutation is one of the integer scores' (the others take the portable path).
    fn in_integer_scores(self) -> bool {
        matches!(self, Self::UncorrectedKeyShift | Self::FirstQueryScaleOfRow)
    }
}

fn mutation() -> Option<Int8Mutation> {
    super::mutants::active("int8_attention", &Int8Mutation::ALL)
}

/// Values of a block of the integer scores: the int8 format's block, half a 512-bit register
/// of codes.
const INTEGER_BLOCK: usize = ROUNDED_BLOCK;

/// Whether a task of `rows` query rows over rows of `width` codes in blocks of `block` takes
/// the integer scores (see the module docs): decode steps of up to 3 rows per key/value head,
/// blocks of 32, whole 64-code registers, on a CPU with AVX-512 VNNI.
fn takes_integer_scores(rows: usize, width: usize, block: usize) -> bool {
    (1..=3).contains(&rows)
        && block == INTEGER_BLOCK
        && width.is_multiple_of(2 * INTEGER_BLOCK)
        && has_avx512_vnni()
}

/// Whether the task rounds its queries for the integer scores: it takes them, and no mutation
/// sends it to the portable path.
fn rounds_queries(mutation: Option<Int8Mutation>, rows: usize, width: usize, block: usize) -> bool {
    mutation.is_none_or(Int8Mutation::in_integer_scores) && takes_integer_scores(rows, width, block)
}

/// See the module docs.
pub(crate) fn causal_attention<B: Backend>(
    query: &Tensor<B, 4>,
    key: &QuantizedRows<B>,
    value: &QuantizedRows<B>,
    key_valid: Option<&[bool]>,
) -> Option<Tensor<B, 4>> {
    let query = flex_float(query)?;
    let codes = [flex_int8(&key.codes)?, flex_int8(&value.codes)?];
    let scales = [flex_float(&key.scales)?, flex_float(&value.scales)?];
    if scales.iter().any(|s| s.dtype() != query.dtype()) {
        return None;
    }
    let context = match query.dtype() {
        DType::F32 => attend::<f32>(&query, &codes, &scales, key_valid),
        DType::F16 => attend::<f16>(&query, &codes, &scales, key_valid),
        DType::BF16 => attend::<bf16>(&query, &codes, &scales, key_valid),
        _ => None,
    };
    from_flex(context?)
}

/// One (sequence, key/value head)'s rows in the int8 format: codes and their block scales.
struct Int8Rows<'a, E> {
    codes: Rows<'a, i8>,
    scales: Rows<'a, E>,
    block: usize,
    /// Read on the calling thread (the tests choose it per thread), not in the pool's tasks.
    mutation: Option<Int8Mutation>,
}

impl<E: KernelElement> Int8Rows<'_, E> {
    fn count(&self) -> usize {
        self.codes.count
    }

    /// Every row's scales widened to f32, `[count, blocks]` (once per task: a half-precision
    /// scale converted at each use cost more than the codes' arithmetic), in vector registers.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; called only from functions compiled for them (inlined).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn scales_f32(&self, dst: &mut Vec<f32>) {
        let blocks = self.scales.width;
        dst.clear();
        dst.resize(self.count() * blocks, 0.0);
        match self.scales.as_contiguous() {
            // SAFETY: the caller's contract.
            Some(all) => unsafe { widen_avx2(all, dst) },
            None => {
                for (j, dst) in dst.chunks_exact_mut(blocks).enumerate() {
                    // SAFETY: the caller's contract.
                    unsafe { widen_avx2(self.scales.row(j), dst) };
                }
            }
        }
    }

    /// Rows `first..first + count` widened, `code x scale`, into `dst` (`count x width`).
    /// (The portable path, and every mutant: the vector path widens in registers.)
    fn widen(&self, first: usize, count: usize, dst: &mut [f32]) {
        let mutation = self.mutation;
        let width = self.codes.width;
        for (j, dst) in dst.chunks_exact_mut(width).take(count).enumerate() {
            let (codes, scales) = (self.codes.row(first + j), self.scales.row(first + j));
            let blocks = dst
                .chunks_exact_mut(self.block)
                .zip(codes.chunks_exact(self.block));
            for (b, (dst, codes)) in blocks.enumerate() {
                let scale = match mutation {
                    Some(Int8Mutation::FirstScaleOfRow) => scales[0],
                    _ => scales[b],
                }
                .to_f32();
                for (d, &code) in dst.iter_mut().zip(codes) {
                    let code = match mutation {
                        Some(Int8Mutation::UnsignedCodes) => f32::from(code as u8),
                        _ => f32::from(code),
                    };
                    *d = code * scale;
                }
            }
        }
    }
}

/// A task thread's buffers, reused from task to task.
#[derive(Default)]
struct Scratch {
    /// `[rows, width]` queries in f32.
    queries: Vec<f32>,
    /// `[rows, kv_len]` scores, then softmax weights.
    scores: Vec<f32>,
    /// `[CHUNK, width]` widened key or value rows.
    widened: Vec<f32>,
    /// `[rows, width]` outputs in f32.
    sums: Vec<f32>,
    /// `[kv_len, blocks]` scales of the keys, then of the values, in f32.
    scales: Vec<f32>,
    /// The queries rounded for the integer scores.
    rounded: RoundedRows,
}

fn attend<E: KernelElement>(
    query: &FlexTensor,
    codes: &[FlexTensor; 2],
    scales: &[FlexTensor; 2],
    key_valid: Option<&[bool]>,
) -> Option<FlexTensor> {
    let q = Operand::<E>::new(query)?;
    let (key_codes, value_codes) = (
        Operand::<i8>::new(&codes[0])?,
        Operand::<i8>::new(&codes[1])?,
    );
    let (key_scales, value_scales) = (
        Operand::<E>::new(&scales[0])?,
        Operand::<E>::new(&scales[1])?,
    );
    let [batch, heads, seq_len, head_dim] = q.shape;
    let [kv_batch, kv_heads, kv_len, kv_head_dim] = key_codes.shape;
    let blocks = key_scales.shape[3];
    let shapes_agree = kv_batch == batch
        && kv_head_dim == head_dim
        && value_codes.shape == key_codes.shape
        && key_scales.shape == [batch, kv_heads, kv_len, blocks]
        && value_scales.shape == key_scales.shape
        && blocks > 0
        && head_dim.is_multiple_of(blocks)
        && kv_heads > 0
        && heads.is_multiple_of(kv_heads)
        && kv_len >= seq_len
        && seq_len > 0;
    let contiguous_rows = [key_codes.strides[3], value_codes.strides[3]] == [1, 1]
        && [key_scales.strides[3], value_scales.strides[3]] == [1, 1];
    if !shapes_agree || !contiguous_rows || key_valid.is_some_and(|v| v.len() != batch * kv_len) {
        return None;
    }
    let groups = heads / kv_heads;
    let rows = groups * seq_len;
    if rows > MAX_TASK_ROWS {
        return None;
    }
    let block = head_dim / blocks;
    let history = kv_len - seq_len;
    let vector = has_avx2_fma_f16c() && block.is_multiple_of(8);
    let wide = vector && has_avx512_registers();
    let mutation = mutation();
    let integer_scores = rounds_queries(mutation, rows, head_dim, block);

    let mut context =
        super::tensor::zeroed(Shape::from(vec![batch, heads, seq_len, head_dim]), E::DTYPE);
    // A task's rows `g * seq_len + t` (head `kv_head * groups + g`, query `t`) are contiguous in
    // the `[batch, heads, seq_len, head_dim]` output.
    E::storage_mut(&mut context)
        .par_chunks_mut(rows * head_dim)
        .enumerate()
        .for_each_init(Scratch::default, |scratch, (task, out)| {
            let (b, kv_head) = (task / kv_heads, task % kv_heads);
            let Scratch {
                queries,
                scores,
                widened,
                sums,
                scales: scales_f32,
                rounded,
            } = scratch;
            queries.clear();
            for r in 0..rows {
                let (head, t) = (kv_head * groups + r / seq_len, r % seq_len);
                queries.extend((0..head_dim).map(|c| q.value(b, head, t, c).to_f32()));
            }
            let keys = Int8Rows {
                codes: Rows::new(&key_codes, b, kv_head, 0, kv_len, head_dim),
                scales: Rows::new(&key_scales, b, kv_head, 0, kv_len, blocks),
                block,
                mutation,
            };
            let values = Int8Rows {
                codes: Rows::new(&value_codes, b, kv_head, 0, kv_len, head_dim),
                scales: Rows::new(&value_scales, b, kv_head, 0, kv_len, blocks),
                block,
                mutation,
            };
            let visible = |r: usize| history + r % seq_len + 1;
            let valid = key_valid.map(|valid| &valid[b * kv_len..][..kv_len]);
            scores.clear();
            scores.resize(rows * kv_len, 0.0);
            sums.clear();
            sums.resize(rows * head_dim, 0.0);
            #[cfg(target_arch = "x86_64")]
            if vector && mutation.is_none_or(Int8Mutation::in_integer_scores) {
                if integer_scores {
                    rounded.round(queries);
                }
                let (task, buffers) = (
                    Task {
                        queries,
                        rounded: integer_scores.then_some(&*rounded),
                        keys: &keys,
                        values: &values,
                        seq_len,
                        visible: &visible,
                        valid,
                        mutation,
                    },
                    TaskBuffers {
                        scales: scales_f32,
                        scores,
                        sums,
                    },
                );
                // SAFETY: `vector` is set only where the CPU has the features (and `wide`
                // where it also has AVX-512F/VL) and the blocks are whole vectors (above); the
                // buffers have the sizes the functions require.
                unsafe {
                    if wide {
                        vector_task_wide(task, buffers)
                    } else {
                        vector_task_avx2(task, buffers)
                    }
                }
                return E::narrow(sums, out);
            }
            widened.resize(CHUNK * head_dim, 0.0);
            for first in (0..kv_len).step_by(CHUNK) {
                let count = CHUNK.min(kv_len - first);
                keys.widen(first, count, widened);
                chunk_scores(
                    queries,
                    head_dim,
                    &widened[..count * head_dim],
                    first,
                    scores,
                );
            }
            for (r, row) in scores.chunks_exact_mut(kv_len).enumerate() {
                softmax_prefix_portable(row, visible(r), valid);
            }
            for first in (0..kv_len).step_by(CHUNK) {
                let count = CHUNK.min(kv_len - first);
                values.widen(first, count, widened);
                for (r, sums) in sums.chunks_exact_mut(head_dim).enumerate() {
                    let seen = visible(r).min(first + count);
                    if seen > first {
                        let weights = &scores[r * kv_len + first..r * kv_len + seen];
                        add_weighted_rows(weights, &widened[..count * head_dim], sums);
                    }
                }
            }
            E::narrow(sums, out);
        });
    Some(context)
}

/// One task's operands for the vector path.
struct Task<'a, E> {
    /// `[rows, width]` queries in f32.
    queries: &'a [f32],
    /// The queries rounded, where the task takes the integer scores.
    rounded: Option<&'a RoundedRows>,
    keys: &'a Int8Rows<'a, E>,
    values: &'a Int8Rows<'a, E>,
    seq_len: usize,
    /// How many key slots query row `r` sees.
    visible: &'a dyn Fn(usize) -> usize,
    valid: Option<&'a [bool]>,
    /// A mutation of the integer scores in force (tests only).
    mutation: Option<Int8Mutation>,
}

/// One task's buffers for the vector path (sized by the caller: `scores` `[rows, kv_len]`,
/// `sums` `[rows, width]`, zeroed).
struct TaskBuffers<'a> {
    scales: &'a mut Vec<f32>,
    scores: &'a mut [f32],
    sums: &'a mut [f32],
}

/// The vector path of one task: scores, softmax and weighted values, inlined with the kernels
/// below into [`vector_task_avx2`] and [`vector_task_wide`], so that all of it is compiled for
/// their features (the softmax inlined into the task closure was portable code, and cost a
/// fifth of the attention's time in a decode step at context 4096).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; the block is a multiple of 8. Called only from functions
/// compiled for those features (as are the kernels it inlines).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn vector_task<E: KernelElement>(task: Task<E>, buffers: TaskBuffers) {
    let Task {
        queries,
        rounded,
        keys,
        values,
        seq_len,
        visible,
        valid,
        mutation,
    } = task;
    let TaskBuffers {
        scales,
        scores,
        sums,
    } = buffers;
    let rows = queries.len() / keys.codes.width;
    let kv_len = keys.count();
    // `rounded` is set only where the CPU has AVX-512 (and VNNI), and blocks of 32.
    let wide_values = rounded.is_some();
    // SAFETY: the caller's contract; the buffers' sizes are the functions'.
    unsafe {
        keys.scales_f32(scales);
        match (rounded, rows) {
            // `rounded` is set only where the CPU has VNNI (`takes_integer_scores`).
            (Some(rounded), 1) => integer_scores::<E, 1>(rounded, keys, scales, scores, mutation),
            (Some(rounded), 2) => integer_scores::<E, 2>(rounded, keys, scales, scores, mutation),
            (Some(rounded), _) => integer_scores::<E, 3>(rounded, keys, scales, scores, mutation),
            (None, 2) => stacked_scores_avx2::<E, 2>(queries, keys, scales, scores),
            (None, 3) => stacked_scores_avx2::<E, 3>(queries, keys, scales, scores),
            (None, _) => scores_avx2(queries, keys, scales, scores),
        }
    }
    for (r, row) in scores.chunks_exact_mut(kv_len).enumerate() {
        softmax_prefix_portable(row, visible(r), valid);
    }
    // SAFETY: as above.
    unsafe {
        values.scales_f32(scales);
        // A decode step's rows all see every key: up to 3 of them share each widened code
        // vector (their sums fit the 16 vector registers).
        match (seq_len, rows) {
            (1, 1) if wide_values => stacked_values_avx512::<E, 1>(values, scales, scores, sums),
            (1, 2) if wide_values => stacked_values_avx512::<E, 2>(values, scales, scores, sums),
            (1, 3) if wide_values => stacked_values_avx512::<E, 3>(values, scales, scores, sums),
            (1, 1) => stacked_values_avx2::<E, 1>(values, scales, scores, sums),
            (1, 2) => stacked_values_avx2::<E, 2>(values, scales, scores, sums),
            (1, 3) => stacked_values_avx2::<E, 3>(values, scales, scores, sums),
            _ => weighted_values_avx2(values, scales, visible, scores, sums),
        }
    }
}

/// [`vector_task`] compiled for AVX2, FMA and F16C.
///
/// # Safety
/// As [`vector_task`]'s.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vector_task_avx2<E: KernelElement>(task: Task<E>, buffers: TaskBuffers) {
    // SAFETY: the caller's contract.
    unsafe { vector_task(task, buffers) }
}

/// [`vector_task`] compiled with AVX-512F/VL as well: the same 256-bit instructions with 32
/// vector registers instead of 16 (with 16, the scores pass kept some of its accumulators and
/// its broadcast scales on the stack).
///
/// # Safety
/// As [`vector_task`]'s, and the CPU has AVX-512F and AVX-512VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
unsafe fn vector_task_wide<E: KernelElement>(task: Task<E>, buffers: TaskBuffers) {
    // SAFETY: the caller's contract, a superset of `vector_task`'s.
    unsafe { vector_task(task, buffers) }
}

/// `scores[r * kv_len + first + j] = q_r · widened_j` for the `widened.len() / width` rows of a
/// chunk starting at key `first`.
fn chunk_scores(queries: &[f32], width: usize, widened: &[f32], first: usize, scores: &mut [f32]) {
    let kv_len = scores.len() / (queries.len() / width);
    for (r, q) in queries.chunks_exact(width).enumerate() {
        for (j, key) in widened.chunks_exact(width).enumerate() {
            scores[r * kv_len + first + j] = key.iter().zip(q).map(|(k, q)| k * q).sum();
        }
    }
}

/// `sums += Σ_j weights[j] widened_j`.
fn add_weighted_rows(weights: &[f32], widened: &[f32], sums: &mut [f32]) {
    let width = sums.len();
    for (&weight, row) in weights.iter().zip(widened.chunks_exact(width)) {
        for (s, &v) in sums.iter_mut().zip(row) {
            *s = v.mul_add(weight, *s);
        }
    }
}

/// Eight codes at `codes` widened to f32 (sign-extended, converted).
///
/// # Safety
/// The CPU has AVX2; `codes` addresses eight readable bytes.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8_codes(codes: *const i8) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract.
    unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(codes.cast()))) }
}

/// `scores[r * kv_len + j] = q_r · (codes_j x scales_j)` for every query row and key: eight
/// keys at a time, each block's sum scaled once, the codes widened in registers.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; the block is a multiple of 8; `scores` holds `rows *
/// kv_len` values and `queries` `rows * width`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn scores_avx2<E: KernelElement>(
    queries: &[f32],
    keys: &Int8Rows<E>,
    key_scales: &[f32],
    scores: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (width, block, key_count) = (keys.codes.width, keys.block, keys.count());
    let rows = queries.len() / width;
    let whole = key_count - key_count % 8;
    for first in (0..whole).step_by(8) {
        if first + PREFETCH_ROWS + 8 <= key_count {
            for j in first + PREFETCH_ROWS..first + PREFETCH_ROWS + 8 {
                prefetch(keys.codes.row(j));
            }
        }
        let codes: [*const i8; 8] = std::array::from_fn(|i| keys.codes.row(first + i).as_ptr());
        let blocks = width / block;
        let scales: [&[f32]; 8] =
            std::array::from_fn(|i| &key_scales[(first + i) * blocks..][..blocks]);
        for r in 0..rows {
            let query = queries[r * width..][..width].as_ptr();
            let mut totals = [_mm256_setzero_ps(); 8];
            for b in 0..blocks {
                let mut sums = [_mm256_setzero_ps(); 8];
                for c in (b * block..(b + 1) * block).step_by(8) {
                    // SAFETY: `c + 8 <= width` for the query row and every code row.
                    unsafe {
                        let q = _mm256_loadu_ps(query.add(c));
                        for (sum, codes) in sums.iter_mut().zip(&codes) {
                            *sum = _mm256_fmadd_ps(q, load8_codes(codes.add(c)), *sum);
                        }
                    }
                }
                for ((total, sum), scales) in totals.iter_mut().zip(sums).zip(&scales) {
                    *total = _mm256_fmadd_ps(sum, _mm256_set1_ps(scales[b]), *total);
                }
            }
            let out = &mut scores[r * key_count + first..][..8];
            // SAFETY: eight scores are writable.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), lane_sums_of_eight(totals)) };
        }
    }
    tail_scores(queries, keys, whole, scores);
}

/// The scores of the keys from `first` on (the tail that does not fill a vector group of the
/// vector paths), each key widened on its own.
fn tail_scores<E: KernelElement>(
    queries: &[f32],
    keys: &Int8Rows<E>,
    first: usize,
    scores: &mut [f32],
) {
    let (width, key_count) = (keys.codes.width, keys.count());
    let mut widened = vec![0.0f32; width];
    for j in first..key_count {
        keys.widen(j, 1, &mut widened);
        for (r, q) in queries.chunks_exact(width).enumerate() {
            scores[r * key_count + j] = widened.iter().zip(q).map(|(k, q)| k * q).sum();
        }
    }
}

/// [`scores_avx2`] for `ROWS` (2 or 3) query rows, [`STACKED_KEYS`] keys at a time: each code
/// vector is widened and scaled once for all the rows (a decode step's group shares every key),
/// where [`scores_avx2`] widens it once per row. Per eight values of a row: an eighth of the
/// widening's three instructions times `3 / ROWS`, and one multiply-add, against three.
///
/// # Safety
/// As [`scores_avx2`]'s, and `queries` holds `ROWS * width` values.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn stacked_scores_avx2<E: KernelElement, const ROWS: usize>(
    queries: &[f32],
    keys: &Int8Rows<E>,
    key_scales: &[f32],
    scores: &mut [f32],
) {
    use std::arch::x86_64::*;
    const KEYS: usize = STACKED_KEYS;
    let (width, block, key_count) = (keys.codes.width, keys.block, keys.count());
    let blocks = width / block;
    let query: [&[f32]; ROWS] = std::array::from_fn(|r| &queries[r * width..][..width]);
    let whole = key_count - key_count % KEYS;
    for first in (0..whole).step_by(KEYS) {
        if first + PREFETCH_ROWS + KEYS <= key_count {
            for j in first + PREFETCH_ROWS..first + PREFETCH_ROWS + KEYS {
                prefetch(keys.codes.row(j));
            }
        }
        let codes: [*const i8; KEYS] = std::array::from_fn(|k| keys.codes.row(first + k).as_ptr());
        let mut sums = [[_mm256_setzero_ps(); KEYS]; ROWS];
        for b in 0..blocks {
            let scales: [f32; KEYS] = std::array::from_fn(|k| key_scales[(first + k) * blocks + b]);
            for c in (b * block..(b + 1) * block).step_by(8) {
                for (k, codes) in codes.iter().enumerate() {
                    // SAFETY: `c + 8 <= width` for every code row.
                    let key = unsafe {
                        _mm256_mul_ps(load8_codes(codes.add(c)), _mm256_set1_ps(scales[k]))
                    };
                    for (sums, query) in sums.iter_mut().zip(&query) {
                        // SAFETY: `c + 8 <= width` for every query row.
                        let q = unsafe { _mm256_loadu_ps(query.as_ptr().add(c)) };
                        sums[k] = _mm256_fmadd_ps(q, key, sums[k]);
                    }
                }
            }
        }
        // SAFETY: the caller's contract.
        unsafe { store_lane_sums(&sums, first, false, scores) };
    }
    tail_scores(queries, keys, whole, scores);
}

/// `scores[r * kv_len + first + k]` set to (or, with `add`, increased by) the sum of the lanes
/// of `sums[r][k]`, reduced eight at a time (rows after rows, padded with zeros).
///
/// # Safety
/// The CPU has AVX2; `scores` holds `ROWS` rows with keys `first..first + STACKED_KEYS`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn store_lane_sums<const ROWS: usize>(
    sums: &[[std::arch::x86_64::__m256; STACKED_KEYS]; ROWS],
    first: usize,
    add: bool,
    scores: &mut [f32],
) {
    use std::arch::x86_64::*;
    const KEYS: usize = STACKED_KEYS;
    let key_count = scores.len() / ROWS;
    let mut flat = [_mm256_setzero_ps(); 16];
    for (i, sum) in sums.iter().flatten().enumerate() {
        flat[i] = *sum;
    }
    let mut totals = [0.0f32; 16];
    for (half, totals) in flat.chunks_exact(8).zip(totals.chunks_exact_mut(8)) {
        let half: [__m256; 8] = std::array::from_fn(|i| half[i]);
        // SAFETY: eight writable values; the caller's contract.
        unsafe { _mm256_storeu_ps(totals.as_mut_ptr(), lane_sums_of_eight(half)) };
    }
    for r in 0..ROWS {
        let (out, totals) = (
            &mut scores[r * key_count + first..][..KEYS],
            &totals[r * KEYS..],
        );
        for (out, total) in out.iter_mut().zip(totals) {
            *out = if add { *out + total } else { *total };
        }
    }
}

/// The integer scores (see the module docs) of `ROWS` (1 to 3) query rows, [`STACKED_KEYS`]
/// keys at a time, 64 codes (two blocks) a pass: per key and row, one integer product of the
/// 64 key codes (shifted to unsigned) with the row's 64 codes, its 16 sums of four converted,
/// corrected for the shift and scaled by their block's query and key scales. Rows wider than
/// 64 take one pass over the keys per 64 codes, each adding to the scores.
///
/// # Safety
/// The CPU has AVX2, FMA, F16C, AVX-512F/VL/BW/DQ and VNNI; the keys' blocks are
/// [`INTEGER_BLOCK`] codes and their width a multiple of 64; `queries` holds `ROWS` rows
/// rounded with [`RoundedRows::round`], `key_scales` `[kv_len, blocks]`, `scores` `ROWS *
/// kv_len` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512dq,avx512vnni")]
unsafe fn integer_scores<E: KernelElement, const ROWS: usize>(
    queries: &RoundedRows,
    keys: &Int8Rows<E>,
    key_scales: &[f32],
    scores: &mut [f32],
    mutation: Option<Int8Mutation>,
) {
    use std::arch::x86_64::*;
    const KEYS: usize = STACKED_KEYS;
    let (width, key_count) = (keys.codes.width, keys.count());
    let blocks = width / INTEGER_BLOCK;
    let whole = key_count - key_count % KEYS;
    let shift = _mm512_set1_epi8(i8::MIN);
    // A pair of scales (of two neighbouring blocks) spread over a register: the first to
    // lanes 0-7, which sum the first block's codes, the second to lanes 8-15.
    let halves = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    let pair = |pair: &[f32]| {
        let pair = &pair[..2];
        // SAFETY: the mask loads the two values of `pair`, nothing else.
        unsafe { _mm512_permutexvar_ps(halves, _mm512_maskz_loadu_ps(0b11, pair.as_ptr())) }
    };
    for pass in 0..width / (2 * INTEGER_BLOCK) {
        let (column, block) = (pass * 2 * INTEGER_BLOCK, 2 * pass);
        let query: [__m512i; ROWS] = std::array::from_fn(|r| {
            let codes = &queries.codes[r * width + column..][..2 * INTEGER_BLOCK];
            // SAFETY: 64 readable codes.
            unsafe { _mm512_loadu_si512(codes.as_ptr().cast()) }
        });
        let query_scales: [__m512; ROWS] = std::array::from_fn(|r| {
            let row = &queries.scales[r * blocks..][..blocks];
            match mutation {
                Some(Int8Mutation::FirstQueryScaleOfRow) => _mm512_set1_ps(row[0]),
                _ => pair(&row[block..block + 2]),
            }
        });
        // Each sum starts from the shift's correction: the first block's in lane 0, the
        // second's in lane 8.
        let start: [__m512i; ROWS] = std::array::from_fn(|r| {
            let mut lanes = [0i32; 16];
            if mutation != Some(Int8Mutation::UncorrectedKeyShift) {
                lanes[0] = queries.corrections[r * blocks + block];
                lanes[8] = queries.corrections[r * blocks + block + 1];
            }
            // SAFETY: 16 readable values.
            unsafe { _mm512_loadu_si512(lanes.as_ptr().cast()) }
        });
        for first in (0..whole).step_by(KEYS) {
            if pass == 0 && first + PREFETCH_ROWS + KEYS <= key_count {
                for j in first + PREFETCH_ROWS..first + PREFETCH_ROWS + KEYS {
                    prefetch(keys.codes.row(j));
                }
            }
            let mut sums = [[_mm256_setzero_ps(); KEYS]; ROWS];
            for k in 0..KEYS {
                let codes = &keys.codes.row(first + k)[column..][..2 * INTEGER_BLOCK];
                // SAFETY: 64 readable codes.
                let key = unsafe { _mm512_loadu_si512(codes.as_ptr().cast()) };
                let key = _mm512_xor_si512(key, shift);
                let key_scale = pair(&key_scales[(first + k) * blocks + block..][..2]);
                for r in 0..ROWS {
                    let dot = _mm512_dpbusd_epi32(start[r], key, query[r]);
                    let scaled = _mm512_mul_ps(
                        _mm512_cvtepi32_ps(dot),
                        _mm512_mul_ps(query_scales[r], key_scale),
                    );
                    sums[r][k] = _mm256_add_ps(
                        _mm512_castps512_ps256(scaled),
                        _mm512_extractf32x8_ps::<1>(scaled),
                    );
                }
            }
            // SAFETY: the caller's contract.
            unsafe { store_lane_sums(&sums, first, pass > 0, scores) };
        }
    }
    integer_tail_scores(queries, keys, whole, scores);
}

/// The integer scores of the keys from `first` on (the tail that does not fill a group of
/// [`integer_scores`]), one key at a time in exact integer sums: what the vector code
/// computes, in another order.
fn integer_tail_scores<E: KernelElement>(
    queries: &RoundedRows,
    keys: &Int8Rows<E>,
    first: usize,
    scores: &mut [f32],
) {
    let (width, key_count) = (keys.codes.width, keys.count());
    let blocks = width / INTEGER_BLOCK;
    for j in first..key_count {
        let (key_codes, key_scales) = (keys.codes.row(j), keys.scales.row(j));
        let query_rows = queries.codes.chunks_exact(width);
        for (r, query_codes) in query_rows.enumerate() {
            let query_scales = &queries.scales[r * blocks..][..blocks];
            scores[r * key_count + j] = (0..blocks)
                .map(|b| {
                    let range = b * INTEGER_BLOCK..(b + 1) * INTEGER_BLOCK;
                    let dot: i32 = query_codes[range.clone()]
                        .iter()
                        .zip(&key_codes[range])
                        .map(|(&q, &k)| i32::from(q) * i32::from(k))
                        .sum();
                    dot as f32 * (query_scales[b] * key_scales[b].to_f32())
                })
                .sum();
        }
    }
}

/// `out_r = Σ_j weights[r, j] (codes_j x scales_j)` over each row's visible keys, the codes
/// widened in registers and each weight scaled once per block; keys in groups of
/// [`CHUNK`] so that a group's rows, brought in by the first query row, serve the others from
/// the first-level cache.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; the block is a multiple of 8; `out` holds `rows * width`
/// values and `weights` `rows * kv_len`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn weighted_values_avx2<E: KernelElement>(
    values: &Int8Rows<E>,
    value_scales: &[f32],
    visible: &dyn Fn(usize) -> usize,
    weights: &[f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (width, block, key_count) = (values.codes.width, values.block, values.count());
    let blocks = width / block;
    for group in (0..key_count).step_by(CHUNK) {
        for (r, out) in out.chunks_exact_mut(width).enumerate() {
            let seen = visible(r).min(group + CHUNK);
            if seen <= group {
                continue;
            }
            let weights = &weights[r * key_count..][group..seen];
            for slab in (0..width).step_by(64) {
                let vectors = ((width - slab) / 8).min(8);
                let block_of: [usize; 8] =
                    std::array::from_fn(|i| (slab + 8 * i.min(vectors - 1)) / block);
                let out = out[slab..][..vectors * 8].as_mut_ptr();
                // SAFETY: `out` addresses `vectors` whole vectors, and so does every code row
                // from `slab` on.
                unsafe {
                    let mut sums = [_mm256_setzero_ps(); 8];
                    for (i, sum) in sums.iter_mut().enumerate().take(vectors) {
                        *sum = _mm256_loadu_ps(out.add(i * 8));
                    }
                    for (j, &weight) in (group..).zip(weights) {
                        if r == 0 && slab == 0 && j + PREFETCH_ROWS < key_count {
                            prefetch(values.codes.row(j + PREFETCH_ROWS));
                        }
                        let codes = values.codes.row(j)[slab..].as_ptr();
                        let scales = &value_scales[j * blocks..][..blocks];
                        let mut current = block_of[0];
                        let mut coefficient = _mm256_set1_ps(weight * scales[current]);
                        for (i, sum) in sums.iter_mut().enumerate().take(vectors) {
                            if block_of[i] != current {
                                current = block_of[i];
                                coefficient = _mm256_set1_ps(weight * scales[current]);
                            }
                            *sum =
                                _mm256_fmadd_ps(coefficient, load8_codes(codes.add(8 * i)), *sum);
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

/// [`stacked_values_avx2`] in 512-bit registers: sixteen codes widened and scaled (once for
/// all the rows) per instruction pair, 64 output values of every row summed at a time.
///
/// # Safety
/// As [`stacked_values_avx2`]'s, the CPU also has AVX-512F/VL, and the block is a multiple of
/// 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
unsafe fn stacked_values_avx512<E: KernelElement, const ROWS: usize>(
    values: &Int8Rows<E>,
    value_scales: &[f32],
    weights: &[f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    const VECTORS: usize = 4;
    let (width, block, key_count) = (values.codes.width, values.block, values.count());
    let blocks = width / block;
    let row_weights: [&[f32]; ROWS] =
        std::array::from_fn(|r| &weights[r * key_count..][..key_count]);
    for slab in (0..width).step_by(16 * VECTORS) {
        let vectors = ((width - slab) / 16).min(VECTORS);
        let block_of: [usize; VECTORS] =
            std::array::from_fn(|i| (slab + 16 * i.min(vectors - 1)) / block);
        let mut sums = [[_mm512_setzero_ps(); VECTORS]; ROWS];
        for j in 0..key_count {
            if slab == 0 && j + PREFETCH_ROWS < key_count {
                prefetch(values.codes.row(j + PREFETCH_ROWS));
            }
            let codes = values.codes.row(j)[slab..].as_ptr();
            let scales = &value_scales[j * blocks..][..blocks];
            let weight: [__m512; ROWS] = std::array::from_fn(|r| _mm512_set1_ps(row_weights[r][j]));
            for (i, block) in block_of.iter().enumerate().take(vectors) {
                // SAFETY: `slab + 16 * i + 16 <= width`: sixteen codes readable.
                let codes = unsafe { _mm_loadu_si128(codes.add(16 * i).cast()) };
                let value = _mm512_mul_ps(
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(codes)),
                    _mm512_set1_ps(scales[*block]),
                );
                for (sums, weight) in sums.iter_mut().zip(&weight) {
                    sums[i] = _mm512_fmadd_ps(*weight, value, sums[i]);
                }
            }
        }
        for (r, sums) in sums.iter().enumerate() {
            for (i, sum) in sums.iter().enumerate().take(vectors) {
                // SAFETY: `slab + 16 * i + 16 <= width` inside row `r` of `out`.
                unsafe { _mm512_storeu_ps(out[r * width + slab + 16 * i..].as_mut_ptr(), *sum) };
            }
        }
    }
}

/// [`weighted_values_avx2`] for `ROWS` query rows that all see every key: each code vector is
/// widened once for all of them, 32 output values of every row summed in registers at a time.
///
/// # Safety
/// As [`weighted_values_avx2`]'s, and `out` holds `ROWS * width` values, `weights` `ROWS *
/// kv_len`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn stacked_values_avx2<E: KernelElement, const ROWS: usize>(
    values: &Int8Rows<E>,
    value_scales: &[f32],
    weights: &[f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    const VECTORS: usize = 4;
    let (width, block, key_count) = (values.codes.width, values.block, values.count());
    let blocks = width / block;
    for slab in (0..width).step_by(8 * VECTORS) {
        let vectors = ((width - slab) / 8).min(VECTORS);
        let block_of: [usize; VECTORS] =
            std::array::from_fn(|i| (slab + 8 * i.min(vectors - 1)) / block);
        // A slab inside one block (every head size with blocks of 32 or more) takes one
        // coefficient per row and key.
        let one_block = block_of.iter().all(|&b| b == block_of[0]);
        let row_weights: [&[f32]; ROWS] =
            std::array::from_fn(|r| &weights[r * key_count..][..key_count]);
        let mut sums = [[_mm256_setzero_ps(); VECTORS]; ROWS];
        for j in 0..key_count {
            if slab == 0 && j + PREFETCH_ROWS < key_count {
                prefetch(values.codes.row(j + PREFETCH_ROWS));
            }
            let codes = values.codes.row(j)[slab..].as_ptr();
            let scales = &value_scales[j * blocks..][..blocks];
            let coefficients: [__m256; ROWS] =
                std::array::from_fn(|r| _mm256_set1_ps(row_weights[r][j] * scales[block_of[0]]));
            for (i, block) in block_of.iter().enumerate().take(vectors) {
                // SAFETY: `slab + 8 * i + 8 <= width`: eight codes readable.
                let v = unsafe { load8_codes(codes.add(8 * i)) };
                for (r, sums) in sums.iter_mut().enumerate() {
                    let coefficient = if one_block {
                        coefficients[r]
                    } else {
                        _mm256_set1_ps(row_weights[r][j] * scales[*block])
                    };
                    sums[i] = _mm256_fmadd_ps(coefficient, v, sums[i]);
                }
            }
        }
        for (r, sums) in sums.iter().enumerate() {
            for (i, sum) in sums.iter().enumerate().take(vectors) {
                // SAFETY: `slab + 8 * i + 8 <= width` inside row `r` of `out`.
                unsafe { _mm256_storeu_ps(out[r * width + slab + 8 * i..].as_mut_ptr(), *sum) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Tensor, TensorData};
    use burn_flex::Flex;

    use super::*;
    use crate::kernels::flex::mutants;
    use crate::kernels::flex::tensor::f32_values;
    use crate::kv_quantization::quantize_rows;

    /// f64 attention over the dequantized rows (codes x scale of their block), holes hidden,
    /// queries the last `seq_len` slots.
    fn reference(
        query: &[f64],
        [batch, heads, seq_len, head_dim]: [usize; 4],
        [key, value]: [&[f64]; 2],
        kv_heads: usize,
        kv_len: usize,
        valid: Option<&[bool]>,
    ) -> Vec<f64> {
        let groups = heads / kv_heads;
        let mut out = vec![0.0; batch * heads * seq_len * head_dim];
        for b in 0..batch {
            for h in 0..heads {
                let kv = (b * kv_heads + h / groups) * kv_len;
                for t in 0..seq_len {
                    let q = &query[((b * heads + h) * seq_len + t) * head_dim..][..head_dim];
                    let seen = kv_len - seq_len + t + 1;
                    let live = |j: usize| valid.is_none_or(|v| v[b * kv_len + j]);
                    let scores: Vec<f64> = (0..seen)
                        .map(|j| {
                            let k = &key[(kv + j) * head_dim..][..head_dim];
                            q.iter().zip(k).map(|(a, b)| a * b).sum()
                        })
                        .collect();
                    let max = (0..seen)
                        .filter(|&j| live(j))
                        .map(|j| scores[j])
                        .fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = (0..seen)
                        .map(|j| {
                            if live(j) {
                                (scores[j] - max).exp()
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    let total: f64 = weights.iter().sum();
                    let o = &mut out[((b * heads + h) * seq_len + t) * head_dim..][..head_dim];
                    for (j, w) in weights.iter().enumerate() {
                        let v = &value[(kv + j) * head_dim..][..head_dim];
                        for (o, v) in o.iter_mut().zip(v) {
                            *o += w / total * v;
                        }
                    }
                }
            }
        }
        out
    }

    fn random(seed: u64, n: usize, scale: f64) -> Vec<f64> {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-scale..scale)).collect()
    }

    /// The kernel's worst difference from the reference for one shape, or `None` when it
    /// declined the shape.
    fn worst_difference(
        [batch, heads, kv_heads, seq_len, kv_len, head_dim]: [usize; 6],
        block: usize,
        dtype: DType,
        holes: bool,
    ) -> Option<f64> {
        let device = Default::default();
        let tensor = |values: Vec<f64>, shape: [usize; 4]| {
            Tensor::<Flex, 4>::from_data(TensorData::new(values, shape), &device)
                .cast(burn::tensor::FloatDType::from(dtype))
        };
        let kv_shape = [batch, kv_heads, kv_len, head_dim];
        let n = batch * kv_heads * kv_len * head_dim;
        let query_values = random(1, batch * heads * seq_len * head_dim, 0.5);
        let query = tensor(query_values, [batch, heads, seq_len, head_dim]);
        let key = quantize_rows(tensor(random(2, n, 2.0), kv_shape), block, DType::I8);
        let value = quantize_rows(tensor(random(3, n, 1.0), kv_shape), block, DType::I8);
        let valid: Vec<bool> = (0..batch * kv_len)
            .map(|i| !holes || i % 5 != 3 || i % kv_len == kv_len - 1)
            .collect();
        let valid = holes.then_some(valid.as_slice());
        let context = causal_attention(&query, &key, &value, valid)?;
        assert_eq!(context.dtype(), dtype);
        let host = |t: Tensor<Flex, 4>| {
            f32_values(&t.cast(burn::tensor::FloatDType::F32))
                .into_iter()
                .map(f64::from)
                .collect::<Vec<_>>()
        };
        // Where the kernel rounds its queries (the integer scores), the reference attends with
        // the rounded queries: what it must match is attention over the dequantized rows for
        // those queries (the rounding itself is checked on its own, below).
        let mut query = host(query);
        if rounds_queries(mutation(), heads / kv_heads * seq_len, head_dim, block) {
            query = rounded_values(&query);
        }
        let expected = reference(
            &query,
            [batch, heads, seq_len, head_dim],
            [&host(key.dequantize()), &host(value.dequantize())],
            kv_heads,
            kv_len,
            valid,
        );
        Some(
            host(context)
                .iter()
                .zip(&expected)
                .map(|(a, e)| (a - e).abs())
                .fold(0.0, f64::max),
        )
    }

    /// `values` rounded as the integer scores round their queries, and widened back.
    fn rounded_values(values: &[f64]) -> Vec<f64> {
        let mut rounded = RoundedRows::default();
        rounded.round(&values.iter().map(|&v| v as f32).collect::<Vec<_>>());
        let scales = rounded.scales.iter().flat_map(|&s| [s; INTEGER_BLOCK]);
        let codes = rounded.codes.iter().zip(scales);
        codes.map(|(&c, s)| f64::from(c) * f64::from(s)).collect()
    }

    /// Shapes: grouped heads (1, 2 and 3 per key/value head), decode steps and chunks, chunk tails
    /// (kv_len not a multiple of 64 or 8), blocks of 32 and of a whole 24-wide head, a head of
    /// 12 (the portable loops), a head of 128 (two passes of the integer scores), with and
    /// without holes, f32 and f16.
    const CASES: [([usize; 6], usize); 9] = [
        ([2, 6, 2, 1, 150, 64], 32),
        ([1, 2, 2, 1, 33, 64], 32),
        ([1, 4, 2, 1, 100, 64], 32),
        ([1, 9, 3, 1, 7, 64], 32),
        ([2, 4, 2, 3, 70, 64], 32),
        ([1, 4, 2, 2, 65, 24], 24),
        ([2, 2, 1, 1, 9, 12], 12),
        ([1, 3, 3, 4, 130, 64], 64),
        ([1, 3, 1, 1, 50, 128], 32),
    ];

    fn check_all() -> Result<(), String> {
        for (shape, block) in CASES {
            for holes in [false, true] {
                for (dtype, tolerance) in [(DType::F32, 2e-5), (DType::F16, 2e-2)] {
                    let worst = worst_difference(shape, block, dtype, holes)
                        .ok_or_else(|| format!("{shape:?} declined"))?;
                    if worst > tolerance {
                        return Err(format!(
                            "{shape:?} block {block} {dtype:?} holes {holes}: {worst:.2e}"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn matches_f64_attention_over_the_dequantized_rows() {
        check_all().unwrap();
    }

    #[test]
    fn long_steps_and_other_backends_are_declined() {
        // 9 heads x 4 queries = 36 rows per task: a prefill, for the float path.
        assert!(worst_difference([1, 9, 1, 4, 40, 64], 32, DType::F32, false).is_none());
        assert_eq!(MAX_TASK_ROWS, 32);
    }

    #[test]
    fn every_mutation_is_caught() {
        // The integer scores' mutations where this CPU takes the integer scores.
        let here: Vec<_> = Int8Mutation::ALL
            .into_iter()
            .filter(|m| !m.in_integer_scores() || has_avx512_vnni())
            .collect();
        let survivors = mutants::surviving("int8_attention", &here, check_all);
        assert!(survivors.is_empty(), "{survivors:?} survived");
    }
}
