//! Causal grouped-query attention on burn-flex's f32 (or f16, bf16) tensors in one parallel pass
//! (feature `flex`), for every step with a causal mask: prefills, chunks and decode steps.
//!
//! Burn 0.21's flex runs its fused attention op on one thread, with a scalar softmax and no
//! skipping of the causal half: on SmolLM2-135M it took more time of a 512-token prefill than
//! all of the model's projections (docs/benchmarks.md). Composing the same attention from Burn
//! ops (batched matmul, mask, softmax) was no faster: the score tensor and the mask are built,
//! filled and freed once per layer. In decode steps the composed form runs its small products
//! on one thread. This module is the attention written for the CPU:
//!
//! - one task per (sequence, query head, block of [`QUERY_BLOCK`] queries), spread over rayon's
//!   pool (the pool flex's matmuls use);
//! - a block multiplies its queries only with the keys its last query may see (the causal half
//!   of the scores is never computed) and each row's softmax stops at that row's last visible key;
//! - query heads read their group's key/value head through its strides: the cache's history is
//!   neither repeated per head nor copied;
//! - the scores of a block live in a scratch buffer of the task's thread.
//!
//! # Contract
//! [`causal_attention`] computes `softmax(q kᵀ + causal) v` for queries that are already scaled,
//! with the queries the *last* `seq_len` of the `kv_len` key slots (bottom-right causality, as
//! [`AttentionMask::Causal`](crate::AttentionMask::Causal)). It returns `None`, leaving the work
//! to the generic path, for any other backend (the autodiff backend included: training has its
//! own differentiable form, [`super::training_attention`]) and any other element type than f32, f16 and bf16. Half-precision
//! operands take the few-row path as they are ([`super::few_row_attention`]: decode steps, a
//! group of up to [`FEW_QUERY_ROWS`] stacked query heads, and chunks of up to that many tokens);
//! longer steps (gemm here multiplies f32) are widened to f32, attended and rounded once. f32
//! queries over half-precision keys/values (an f32 model's f16 or bf16 cache) take the same two
//! paths, the queries and the context staying f32. The
//! conformance suite runs through it on flex; `tests` below check it against an f64 reference,
//! in f32, f16 and bf16.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use half::{bf16, f16};

use super::few_row_attention::{few_row_attention, FewRowScratch};
use super::softmax::softmax_prefix;
use super::strided::{Operand, Rows};
use super::tensor::{flex_float, from_flex, narrowed_half, widened_half};
use super::vector::{has_avx2_fma_f16c, KernelElement};

/// Queries per task. Small enough that a block's scores (`QUERY_BLOCK * kv_len` values) stay in
/// a core's cache at the context lengths of a prefill, large enough that a block's product is
/// a matrix product and not a row-by-row one.
const QUERY_BLOCK: usize = 64;

/// Up to this many query rows a task computes without gemm ([`few_row_attention`]): gemm packs
/// the keys and values into its own layout before multiplying, which costs more than the
/// product itself when only a few rows read them (a decode step).
const FEW_QUERY_ROWS: usize = 8;

/// `[batch, heads, seq_len, head_dim]` context for scaled `query` `[batch, heads, seq_len,
/// head_dim]` and `key`/`value` `[batch, kv_heads, kv_len, head_dim]`, when they are flex f32
/// tensors; `None` otherwise (see the module docs).
pub(crate) fn causal_attention<B: Backend>(
    query: &Tensor<B, 4>,
    key: &Tensor<B, 4>,
    value: &Tensor<B, 4>,
    key_valid: Option<&[bool]>,
) -> Option<Tensor<B, 4>> {
    let (query, key, value) = (flex_float(query)?, flex_float(key)?, flex_float(value)?);
    if key.dtype() != value.dtype() {
        return None;
    }
    let context = match (query.dtype(), key.dtype()) {
        (DType::F32, DType::F32) => attend::<f32, f32>(&query, &key, &value, key_valid),
        (DType::F16, DType::F16) => half_attention::<f16, f16>(&query, &key, &value, key_valid),
        (DType::BF16, DType::BF16) => half_attention::<bf16, bf16>(&query, &key, &value, key_valid),
        (DType::F32, DType::F16) => half_attention::<f32, f16>(&query, &key, &value, key_valid),
        (DType::F32, DType::BF16) => half_attention::<f32, bf16>(&query, &key, &value, key_valid),
        _ => None,
    };
    from_flex(context?)
}

/// Attention with half-precision keys/values, the queries `Q` of the same type (a model loaded
/// in f16 or bf16) or f32 (an f32 model with `--kv-dtype f16`): the few-row path reads the
/// operands as they are, widening them in registers (decode steps, short chunks); longer steps
/// (a prefill) widen the operands to f32, run the f32 path and round the context once.
/// Widening is `O(kv_len x head_dim)` per head against the attention's `O(seq_len x kv_len x
/// head_dim)`: flex's own fused attention, which half-precision prefills fell back to before,
/// made a 1,024-token SmolLM2 prompt about 3x slower in f16 than in f32; and widening an f32
/// model's f16 history into a copy before every decode step, as the generic path does, made
/// those steps 2.2x (batch 1) to 18x (batch 8, context 4096) slower than with an f32 cache
/// (docs/benchmarks.md).
fn half_attention<Q: KernelElement, E: KernelElement>(
    query: &FlexTensor,
    key: &FlexTensor,
    value: &FlexTensor,
    key_valid: Option<&[bool]>,
) -> Option<FlexTensor> {
    if has_avx2_fma_f16c() {
        if let Some(context) = attend::<Q, E>(query, key, value, key_valid) {
            return Some(context);
        }
    }
    // Layouts are checked before anything is read: one that reaches outside its buffer is
    // refused here as on the f32 path, never widened.
    Operand::<Q>::new(query)?;
    for operand in [key, value] {
        Operand::<E>::new(operand)?;
    }
    let query_f32 = match Q::DTYPE {
        DType::F32 => query.clone(),
        _ => widened_half(query)?,
    };
    let context = attend::<f32, f32>(
        &query_f32,
        &widened_half(key)?,
        &widened_half(value)?,
        key_valid,
    )?;
    match Q::DTYPE {
        DType::F32 => Some(context),
        dtype => narrowed_half(&context, dtype),
    }
}

/// The attention of `Q` queries (and context) over `E` keys and values: any pair through the
/// few-row path, f32 alone through gemm (`None` when a task would need gemm otherwise).
fn attend<Q: KernelElement, E: KernelElement>(
    query: &FlexTensor,
    key: &FlexTensor,
    value: &FlexTensor,
    key_valid: Option<&[bool]>,
) -> Option<FlexTensor> {
    let dims = |t: &FlexTensor| -> [usize; 4] {
        let shape = t.layout().shape();
        [shape[0], shape[1], shape[2], shape[3]]
    };
    let [batch, heads, seq_len, head_dim] = dims(query);
    let [kv_batch, kv_heads, kv_len, kv_head_dim] = dims(key);
    let shapes_agree = kv_batch == batch
        && kv_head_dim == head_dim
        && dims(value) == dims(key)
        && kv_heads > 0
        && heads.is_multiple_of(kv_heads)
        && kv_len >= seq_len
        && seq_len > 0
        && head_dim > 0;
    if !shapes_agree || key_valid.is_some_and(|valid| valid.len() != batch * kv_len) {
        return None;
    }
    let groups = heads / kv_heads;
    let history = kv_len - seq_len;
    let all_f32 = Q::DTYPE == DType::F32 && E::DTYPE == DType::F32;
    let (q, k, v) = (
        Operand::<Q>::new(query)?,
        Operand::<E>::new(key)?,
        Operand::<E>::new(value)?,
    );
    // A decode step (one query per sequence) with a task for every thread: the query heads of a
    // group become the rows of one task, which then reads its key/value head once instead of
    // once per query head. The heads of a group lie at one stride from each other, in the
    // queries as in the `[batch, heads, 1, head_dim]` output, and all see every key. (At batch 1
    // SmolLM2's 3 key/value heads make 3 tasks for 2 threads, one thread doing two: still less
    // than the 9 reads of the heads one by one, measured 18.3-21.1 -> 16.2-16.8 ms a step at
    // context 4096.) Half precision stacks only groups the few-row path takes whole: a larger
    // group would be a task for gemm, which multiplies f32 only here.
    let stacked = seq_len == 1
        && groups > 1
        && (all_f32 || groups <= FEW_QUERY_ROWS)
        && batch * kv_heads >= rayon::current_num_threads();
    let unit_dim_stride = q.strides[3] == 1 && k.strides[3] == 1 && v.strides[3] == 1;
    let (q, task_heads, task_rows) = if stacked {
        let [batch_stride, head_stride, _, dim_stride] = q.strides;
        let q = q.restrided(
            [batch, kv_heads, groups, head_dim],
            [batch_stride, head_stride * groups, head_stride, dim_stride],
        )?;
        (q, kv_heads, groups)
    } else {
        (q, heads, seq_len)
    };

    // A task of at most FEW_QUERY_ROWS rows takes the few-row path; other element types than
    // f32 take only that path (gemm here multiplies f32), so every one of their tasks must.
    let every_task_few_rows = unit_dim_stride && task_rows <= FEW_QUERY_ROWS;
    if !all_f32 && !every_task_few_rows {
        return None;
    }
    let mut context =
        super::tensor::zeroed(Shape::from(vec![batch, heads, seq_len, head_dim]), Q::DTYPE);
    let output = Q::storage_mut(&mut context);
    output
        .par_chunks_mut(task_rows * head_dim)
        .enumerate()
        .flat_map(|(sequence_head, out)| {
            out.par_chunks_mut(QUERY_BLOCK * head_dim)
                .enumerate()
                .map(move |(block, out)| (sequence_head, block, out))
        })
        .for_each_init(
            FewRowScratch::default,
            |scratch, (sequence_head, block, out)| {
                let (b, head) = (sequence_head / task_heads, sequence_head % task_heads);
                let first = block * QUERY_BLOCK;
                let rows = out.len() / head_dim;
                // Keys visible to row `row` of the block; the last row sees them all.
                let visible = |row: usize| {
                    if stacked {
                        kv_len
                    } else {
                        history + first + row + 1
                    }
                };
                let keys = visible(rows - 1);
                let kv_head = if stacked { head } else { head / groups };
                // This sequence's valid key slots (every row of a task is of one sequence).
                let valid = key_valid.map(|valid| &valid[b * kv_len..][..keys]);
                if rows <= FEW_QUERY_ROWS && unit_dim_stride {
                    few_row_attention(
                        &Rows::new(&q, b, head, first, rows, head_dim),
                        &Rows::new(&k, b, kv_head, 0, keys, head_dim),
                        &Rows::new(&v, b, kv_head, 0, keys, head_dim),
                        &visible,
                        valid,
                        scratch,
                        out,
                    );
                    return;
                }
                // f32 from here on: other types returned above unless every task has few rows.
                let out = Q::as_f32_mut(out).expect("f32 attention (checked above)");
                let q_row = |head, row| {
                    q.row_f32(b, head, row)
                        .expect("f32 operands (checked above)")
                };
                let f32_row = |operand: &Operand<E>, head, row| {
                    operand
                        .row_f32(b, head, row)
                        .expect("f32 operands (checked above)")
                };
                let scores = &mut scratch.scores;
                scores.clear();
                scores.resize(rows * keys, 0.0);
                // SAFETY: every operand pointer addresses `rows` (or `keys`) rows of `head_dim`
                // elements through the strides of its own layout, inside the extent that
                // `Operand::new` checked against its storage (rows and heads are inside the shape:
                // `first + rows <= seq_len`, `keys <= kv_len`); `scores` and `out` are exclusive
                // buffers of exactly the written size.
                unsafe {
                    gemm_product(
                        [rows, keys, head_dim],
                        (scores.as_mut_ptr(), keys),
                        (q_row(head, first), q.strides[2], q.strides[3]),
                        (f32_row(&k, kv_head, 0), k.strides[3], k.strides[2]),
                    );
                }
                for (row, scores) in scores.chunks_exact_mut(keys).enumerate() {
                    softmax_prefix(scores, visible(row), valid);
                }
                // SAFETY: as above; the scores are `rows` rows of `keys` values.
                unsafe {
                    gemm_product(
                        [rows, head_dim, keys],
                        (out.as_mut_ptr(), head_dim),
                        (scores.as_ptr(), keys, 1),
                        (f32_row(&v, kv_head, 0), v.strides[2], v.strides[3]),
                    );
                }
            },
        );
    Some(context)
}

/// `dst = lhs rhs` on one thread, for `[m, n, k]`: `dst` is `m` rows of `n` contiguous values
/// (its row stride given), `lhs` is `m x k` and `rhs` is `k x n`, each given as a pointer with
/// its row and column strides.
///
/// # Safety
/// Every pointer addresses the whole matrix its strides describe, and `dst` is exclusive.
pub(super) unsafe fn gemm_product(
    dims: [usize; 3],
    dst: (*mut f32, usize),
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
) {
    // SAFETY: the caller's contract.
    unsafe { gemm_into(dims, dst, lhs, rhs, false) }
}

/// [`gemm_product`], adding the product to `dst`'s values when `accumulate` (`dst += lhs rhs`,
/// the training kernel's sums over query blocks).
///
/// # Safety
/// As [`gemm_product`]; with `accumulate`, `dst` holds initialized values.
pub(super) unsafe fn gemm_into(
    [m, n, k]: [usize; 3],
    (dst, dst_row_stride): (*mut f32, usize),
    (lhs, lhs_row_stride, lhs_col_stride): (*const f32, usize, usize),
    (rhs, rhs_row_stride, rhs_col_stride): (*const f32, usize, usize),
    accumulate: bool,
) {
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_row_stride as isize,
            accumulate,
            lhs,
            lhs_col_stride as isize,
            lhs_row_stride as isize,
            rhs,
            rhs_col_stride as isize,
            rhs_row_stride as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;
    use burn_flex::Flex;

    use crate::kernels::flex::tensor::f32_values;

    /// Scaled-query causal attention in f64, bottom-right aligned, heads grouped.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        [batch, heads, seq_len, head_dim]: [usize; 4],
        kv_heads: usize,
        kv_len: usize,
    ) -> Vec<f64> {
        reference_with_holes(
            q,
            k,
            v,
            [batch, heads, seq_len, head_dim],
            kv_heads,
            kv_len,
            None,
        )
    }

    /// [`reference`] with the key slots that `valid` (`[batch, kv_len]`) marks `false` hidden.
    fn reference_with_holes(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        [batch, heads, seq_len, head_dim]: [usize; 4],
        kv_heads: usize,
        kv_len: usize,
        valid: Option<&[bool]>,
    ) -> Vec<f64> {
        let groups = heads / kv_heads;
        let mut out = vec![0.0; batch * heads * seq_len * head_dim];
        for b in 0..batch {
            for h in 0..heads {
                let kh = h / groups;
                for i in 0..seq_len {
                    let visible = kv_len - seq_len + i + 1;
                    let q_row = &q[((b * heads + h) * seq_len + i) * head_dim..][..head_dim];
                    let kv_row = |t: &[f32], j: usize| {
                        t[((b * kv_heads + kh) * kv_len + j) * head_dim..][..head_dim].to_vec()
                    };
                    let seen = |j: usize| valid.is_none_or(|valid| valid[b * kv_len + j]);
                    let scores: Vec<f64> = (0..visible)
                        .filter(|&j| seen(j))
                        .map(|j| {
                            q_row
                                .iter()
                                .zip(kv_row(k, j))
                                .map(|(&a, b)| a as f64 * b as f64)
                                .sum()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = weights.iter().sum();
                    let seen_keys = (0..visible).filter(|&j| seen(j));
                    for (j, w) in seen_keys.zip(&weights) {
                        for (d, &x) in kv_row(v, j).iter().enumerate() {
                            out[((b * heads + h) * seq_len + i) * head_dim + d] +=
                                w / total * x as f64;
                        }
                    }
                }
            }
        }
        out
    }

    /// The largest absolute difference between the kernel's output and the f64 reference.
    fn worst_difference(out: &Tensor<Flex, 4>, expected: &[f64]) -> f64 {
        f32_values(out)
            .iter()
            .zip(expected)
            .map(|(&a, &b)| (a as f64 - b).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn matches_f64_reference_for_grouped_heads_history_and_strided_inputs() {
        let device = Default::default();
        // (batch, heads, kv_heads, seq_len, history, head_dim): blocks that do not divide the
        // length, a history before the queries (a chunk after a cache), several groups.
        for (batch, heads, kv_heads, seq_len, history, head_dim) in [
            (1, 9, 3, 150, 0, 64),
            (2, 4, 2, 64, 37, 16),
            (1, 2, 1, 1, 5, 8),
            // Decode steps of a batch: a group's heads stacked as one task's rows.
            (8, 9, 3, 1, 40, 64),
            (1, 9, 3, 1, 300, 64),
            (16, 4, 2, 1, 0, 8),
            // A head size with a vector tail (not a multiple of 8 or 16): the portable path.
            (2, 4, 2, 5, 3, 12),
            // Few causal rows over more than one block of values, whose later rows see keys of
            // a block the first rows do not; a key count that is not whole key blocks; a head
            // size of one whole output slab and a narrower one (72), and of two slabs (128).
            (2, 4, 2, 6, 130, 72),
            (1, 2, 1, 3, 197, 128),
            (4, 8, 2, 1, 300, 64),
            (2, 3, 3, 130, 0, 32),
            // Groups larger than the few-row path's rows (16 and 32 query heads per key/value
            // head): stacked in f32, head by head in half precision (a stacked f16 group of 16
            // once reached the f32-only gemm path and panicked).
            (1, 32, 2, 1, 40, 64),
            (2, 16, 1, 1, 10, 8),
            (1, 32, 1, 1, 70, 16),
            (1, 32, 2, 3, 20, 16),
        ] {
            let kv_len = history + seq_len;
            let random = |dims: [usize; 4]| {
                Tensor::<Flex, 4>::random(dims, Distribution::Normal(0.0, 1.0), &device)
            };
            // Queries through a swapped view, keys through a slice of a larger buffer and
            // values through a swapped view, as the model and the cache hand them over.
            // Scaled as the model scales them: scores of order 1, so that every key holds a
            // weight that shows when it is wrongly seen or hidden.
            let q = random([batch, seq_len, heads, head_dim])
                .mul_scalar((head_dim as f64).powf(-0.5))
                .swap_dims(1, 2);
            let k = random([batch, kv_heads, kv_len + 7, head_dim]).slice([
                0..batch,
                0..kv_heads,
                3..kv_len + 3,
                0..head_dim,
            ]);
            let v = random([batch, kv_len, kv_heads, head_dim]).swap_dims(1, 2);
            // f32: the strided operands as they are; f32 rounding is ~1e-6 here, and one key
            // wrongly seen or hidden moves an output by about its weight, 1 / kv_len or more
            // (1e-3). Half precision (a model loaded in f16 or bf16): f32 sums of the operands'
            // values (in the few-row path, or widened), one rounding of the output (2^-11 or
            // 2^-8 relative, outputs below 4). f32 queries over half-precision keys and
            // values (an f32 model's f16 cache): f32 sums of the stored values, no rounding of
            // the output, so f32's tolerance against the reference on those values.
            for (dtype, kv_dtype, tolerance) in [
                (DType::F32, DType::F32, 2e-5),
                (DType::F16, DType::F16, 2e-3),
                (DType::BF16, DType::BF16, 1.6e-2),
                (DType::F32, DType::F16, 2e-5),
                (DType::F32, DType::BF16, 2e-5),
            ] {
                let operand = |t: &Tensor<Flex, 4>, dtype| match dtype {
                    DType::F32 => t.clone(),
                    _ => t.clone().cast(dtype),
                };
                let (q, k, v) = (
                    operand(&q, dtype),
                    operand(&k, kv_dtype),
                    operand(&v, kv_dtype),
                );
                // Every length in every type: half precision widens what the few-row path
                // does not take.
                let out = causal_attention(&q, &k, &v, None)
                    .unwrap_or_else(|| panic!("{seq_len} rows in {dtype:?} over {kv_dtype:?}"));
                assert_eq!(
                    (out.dims(), out.dtype()),
                    ([batch, heads, seq_len, head_dim], dtype)
                );
                let expected = reference(
                    &f32_values(&q),
                    &f32_values(&k),
                    &f32_values(&v),
                    [batch, heads, seq_len, head_dim],
                    kv_heads,
                    kv_len,
                );
                let worst = worst_difference(&out, &expected);
                assert!(
                    worst < tolerance,
                    "{dtype:?} over {kv_dtype:?} ({batch}, {heads}, {kv_heads}, {seq_len}, \
                     {history}, {head_dim}): {worst}"
                );
            }
        }
    }

    #[test]
    fn holes_are_hidden_from_their_sequence_on_every_path() {
        let device = Default::default();
        // (batch, heads, kv_heads, seq_len, history, head_dim): gemm's path (70 rows), few rows,
        // a stacked decode step, a decode step head by head.
        for (batch, heads, kv_heads, seq_len, history, head_dim) in [
            (2, 4, 2, 70, 9, 16),
            (2, 4, 2, 3, 40, 64),
            (3, 6, 2, 1, 50, 64),
            (2, 2, 2, 1, 30, 8),
        ] {
            let kv_len = history + seq_len;
            let random = |dims: [usize; 4]| {
                Tensor::<Flex, 4>::random(dims, Distribution::Normal(0.0, 1.0), &device)
            };
            let q =
                random([batch, heads, seq_len, head_dim]).mul_scalar((head_dim as f64).powf(-0.5));
            let (k, v) = (
                random([batch, kv_heads, kv_len, head_dim]),
                random([batch, kv_heads, kv_len, head_dim]),
            );
            // Sequence 0 has holes in its history and in the step (a shorter prompt), the others
            // a hole or none; slot 0 always holds a token.
            let valid: Vec<bool> = (0..batch * kv_len)
                .map(|i| {
                    let (b, j) = (i / kv_len, i % kv_len);
                    j == 0 || (b == 0 && j % 3 != 1) || (b == 1 && j != history / 2) || b > 1
                })
                .collect();
            for dtype in [DType::F32, DType::F16] {
                let operand = |t: &Tensor<Flex, 4>| t.clone().cast(dtype);
                let (q, k, v) = (operand(&q), operand(&k), operand(&v));
                let Some(out) = causal_attention(&q, &k, &v, Some(&valid)) else {
                    assert!(
                        dtype != DType::F32 && (seq_len > FEW_QUERY_ROWS || !has_avx2_fma_f16c())
                    );
                    continue;
                };
                let expected = reference_with_holes(
                    &f32_values(&q),
                    &f32_values(&k),
                    &f32_values(&v),
                    [batch, heads, seq_len, head_dim],
                    kv_heads,
                    kv_len,
                    Some(&valid),
                );
                let worst = worst_difference(&out, &expected);
                let tolerance = if dtype == DType::F32 { 2e-5 } else { 2e-3 };
                assert!(
                    worst < tolerance,
                    "{dtype:?} ({batch}, {heads}, {kv_heads}, {seq_len}, {history}): {worst}"
                );
            }
        }
        // A validity of the wrong length is refused, not read past.
        let t = Tensor::<Flex, 4>::ones([1, 1, 4, 8], &device);
        assert!(causal_attention(&t, &t, &t, Some(&[true; 3])).is_none());
    }

    /// A flex tensor of `shape` over `buffer` values with an arbitrary layout.
    fn with_layout(
        buffer: usize,
        shape: [usize; 4],
        strides: [isize; 4],
        start: usize,
    ) -> Tensor<Flex, 4> {
        let data = FlexTensor::from_data(burn::tensor::TensorData::new(
            vec![0.5f32; buffer],
            [buffer],
        ));
        let layout = burn_flex::Layout::new(Shape::from(shape.to_vec()), strides.to_vec(), start);
        from_flex(data.with_layout(layout)).unwrap()
    }

    #[test]
    fn a_layout_reaching_outside_its_buffer_is_refused_not_read() {
        let device = Default::default();
        let q = Tensor::<Flex, 4>::ones([1, 2, 70, 8], &device);
        let fits = with_layout(2 * 80 * 8, [1, 2, 80, 8], [1280, 640, 8, 1], 0);
        assert!(causal_attention(&q, &fits, &fits, None).is_some());
        // The start offset is in bounds but the extent is not: the last head's rows run past
        // the buffer by one row (gemm's path, 70 queries), then by a huge stride (overflow).
        let past_end = with_layout(2 * 80 * 8, [1, 2, 80, 8], [1280, 648, 8, 1], 0);
        assert!(causal_attention(&q, &past_end, &fits, None).is_none());
        let overflowing = with_layout(2 * 80 * 8, [1, 2, 80, 8], [1, isize::MAX, 8, 1], 0);
        assert!(causal_attention(&q, &fits, &overflowing, None).is_none());
        let decode = Tensor::<Flex, 4>::ones([1, 2, 1, 8], &device);
        assert!(causal_attention(&decode, &past_end, &fits, None).is_none());
    }

    #[test]
    fn nan_and_infinite_scores_propagate_as_in_burns_softmax() {
        let device = Default::default();
        // Rows of 70 queries (gemm's path) and 1 query (the few-row path).
        for seq_len in [70, 1] {
            let q = Tensor::<Flex, 4>::ones([1, 1, seq_len, 8], &device);
            let mut keys = vec![0.1f32; 80 * 8];
            keys[5 * 8] = f32::NAN; // key 5: seen by every query row at context 80 - seq_len + row
            let k = Tensor::<Flex, 4>::from_data(
                burn::tensor::TensorData::new(keys, [1, 1, 80, 8]),
                &device,
            );
            let v = Tensor::<Flex, 4>::ones([1, 1, 80, 8], &device);
            let out = f32_values(&causal_attention(&q, &k, &v, None).unwrap());
            assert!(
                out.iter().all(|x| x.is_nan()),
                "{seq_len} rows: {:?}",
                &out[..8]
            );
            let generic = f32_values(&burn::tensor::activation::softmax(
                q.matmul(k.swap_dims(2, 3))
                    .slice([0..1, 0..1, seq_len - 1..seq_len, 0..80]),
                3,
            ));
            assert!(
                generic.iter().all(|x| x.is_nan()),
                "Burn's softmax propagates NaN"
            );
        }
    }

    #[test]
    fn other_element_types_and_backends_take_the_generic_path() {
        let device = Default::default();
        let t = Tensor::<Flex, 4>::ones([1, 1, 4, 8], &device);
        let half = t.clone().cast(DType::F16);
        // Half-precision queries over f32 keys/values, keys and values of different types;
        // f64.
        assert!(causal_attention(&half, &t, &t, None).is_none());
        assert!(causal_attention(&t, &half, &t, None).is_none());
        let wide = t.clone().cast(DType::F64);
        assert!(causal_attention(&wide, &wide, &wide, None).is_none());
        type Diff = burn_autodiff::Autodiff<Flex>;
        let d = Tensor::<Diff, 4>::ones([1, 1, 4, 8], &device);
        assert!(causal_attention(&d, &d, &d, None).is_none());
    }
}
