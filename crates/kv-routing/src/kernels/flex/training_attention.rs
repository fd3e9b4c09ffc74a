//! Causal grouped-query attention with its own backward pass, for training on
//! `Autodiff<Flex>` in f32 (feature `flex`): a custom autodiff operation, as Burn 0.21's
//! `custom-cubecl-kernel` example registers one.
//!
//! # Why
//! Burn's autodiff backend computes attention with its generic fallback: the scores
//! `[batch, heads, seq_len, kv_len]` are built, scaled, masked (with a mask tensor of the same
//! size), and passed through a softmax of six element-wise passes, each allocating a tensor that
//! the graph keeps for the backward pass, whose own ops allocate as many again. At SmolLM2's
//! training shape (4 x 512 tokens, 9 heads) one such tensor is 38 MB per layer, above glibc's
//! mmap threshold, so every one is fresh pages; the key/value heads are also repeated for the
//! query heads that share them, and that repeat's gradient summed back. This operation keeps
//! none of it: the forward pass saves the context and one log-sum-exp per query row; the
//! backward pass recomputes each block's weights from them (as FlashAttention does).
//!
//! # Contract
//! [`causal_attention`] computes what the model's generic path computes,
//! `softmax(q kᵀ + causal) v` for already scaled queries that are the *last* `seq_len` of the
//! `kv_len` key slots, and registers a backward pass that gives the gradients of `q`, `k` and
//! `v`, each of its parent's shape. It returns `None` (Burn's ops then run) for any backend but
//! `Autodiff<Flex>` with its default (no) checkpointing, any element type but f32, and any
//! layout the kernels cannot read in place ([`Operand::new`]). Hidden key slots (holes) are not
//! handled here: the caller passes only the plain causal mask.
//!
//! # The backward pass
//! With `P = softmax(S)`, `S = q kᵀ`, `O = P v` and the incoming `dO`, per query row `i`:
//! `D_i = dO_i · O_i`, `dS_ij = P_ij (dO_i · v_j - D_i)`; then `dq = dS k`, `dk = dSᵀ q`,
//! `dv = Pᵀ dO`. One task per (sequence, query head) walks the query blocks; a block's products
//! see only the keys its last row may see. The key/value gradients of a task are its own partial
//! sums, added over the query heads of a group at the end (no two tasks write one buffer).
//!
//! # Rounding
//! f32 throughout, with gemm's products; the weights are recomputed as
//! `exp(s - log_sum_exp)`, which differs from the forward's `exp(s - max) / sum` in the last
//! bits. The tests compare values and gradients with Burn's generic ops in f64.

use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::attention::{gemm_into, gemm_product};
use super::softmax::softmax_prefix;
use super::strided::Operand;
use super::tensor::{diff_float, from_diff};
use super::vector::{exp, has_avx2_fma_f16c};

/// Deliberate errors of the backward pass, switched on only by the tests and `kernel-mutants` builds ([`super::mutants`]): each
/// must fail the comparison with Burn's ops, which shows that the comparison sees such errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(any(test, feature = "kernel-mutants")), allow(dead_code))]
enum Mutation {
    /// `dS = P dP`, the row's `dO · O` left out.
    NoRowDot,
    /// The key/value gradients of only the first query head of each group.
    FirstHeadOfGroupOnly,
    /// Every key of a block seen by every row of it (causality lost inside blocks).
    FutureKeysVisible,
    /// `dv` from the score gradients instead of the weights.
    ValueGradFromScoreGrads,
}

#[cfg_attr(not(any(test, feature = "kernel-mutants")), allow(dead_code))]
impl Mutation {
    const ALL: [Mutation; 4] = [
        Mutation::NoRowDot,
        Mutation::FirstHeadOfGroupOnly,
        Mutation::FutureKeysVisible,
        Mutation::ValueGradFromScoreGrads,
    ];
}

/// The mutation in force ([`super::mutants`]), read on the thread that runs the backward pass.
fn current_mutation() -> Option<Mutation> {
    super::mutants::active("training_attention", &Mutation::ALL)
}

/// Query rows per block: a block's scores and their gradients (`2 * QUERY_BLOCK * kv_len`
/// values) stay in a core's cache at training lengths.
const QUERY_BLOCK: usize = 64;

/// The differentiable context `[batch, heads, seq_len, head_dim]` for scaled `query` `[batch,
/// heads, seq_len, head_dim]` and `key`/`value` `[batch, kv_heads, kv_len, head_dim]`, when `B`
/// is `Autodiff<Flex>` and the tensors hold f32; `None` otherwise (see the module docs).
pub(crate) fn causal_attention<B: Backend>(
    query: &Tensor<B, 4>,
    key: &Tensor<B, 4>,
    value: &Tensor<B, 4>,
) -> Option<Tensor<B, 4>> {
    let (query, key, value) = (diff_float(query)?, diff_float(key)?, diff_float(value)?);
    let dims = Dims::of(&query.primitive, &key.primitive, &value.primitive)?;
    let (context, log_sum_exp) =
        forward(&dims, &query.primitive, &key.primitive, &value.primitive)?;
    let nodes = [query.node.clone(), key.node.clone(), value.node.clone()];
    let output = match CausalAttentionBackward
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            SavedAttention {
                dims,
                query: query.primitive,
                key: key.primitive,
                value: value.primitive,
                context: context.clone(),
                log_sum_exp: Arc::new(log_sum_exp),
            },
            context,
        ),
        OpsKind::UnTracked(prep) => prep.finish(context),
    };
    from_diff(output)
}

/// The sizes of one attention call, checked against every operand.
#[derive(Clone, Copy, Debug)]
struct Dims {
    batch: usize,
    heads: usize,
    kv_heads: usize,
    seq_len: usize,
    kv_len: usize,
    head_dim: usize,
}

impl Dims {
    /// The sizes, when the three operands are f32, 4-D, readable in place and agree.
    fn of(query: &FlexTensor, key: &FlexTensor, value: &FlexTensor) -> Option<Self> {
        let (q, k, v) = (
            Operand::<f32>::new(query)?,
            Operand::<f32>::new(key)?,
            Operand::<f32>::new(value)?,
        );
        let [batch, heads, seq_len, head_dim] = q.shape;
        let [kv_batch, kv_heads, kv_len, kv_head_dim] = k.shape;
        let agree = kv_batch == batch
            && kv_head_dim == head_dim
            && v.shape == k.shape
            && heads.is_multiple_of(kv_heads)
            && kv_len >= seq_len;
        agree.then_some(Self {
            batch,
            heads,
            kv_heads,
            seq_len,
            kv_len,
            head_dim,
        })
    }

    fn groups(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Key slots before the first query (a chunk after a history).
    fn history(&self) -> usize {
        self.kv_len - self.seq_len
    }

    /// Keys visible to query row `row`.
    fn visible(&self, row: usize) -> usize {
        self.history() + row + 1
    }
}

/// What the backward pass reads: the operands (shared handles, no copies), the context and one
/// log-sum-exp per query row, `[batch, heads, seq_len]` row-major.
#[derive(Clone, Debug)]
struct SavedAttention {
    dims: Dims,
    query: FlexTensor,
    key: FlexTensor,
    value: FlexTensor,
    context: FlexTensor,
    log_sum_exp: Arc<Vec<f32>>,
}

#[derive(Debug)]
struct CausalAttentionBackward;

impl Backward<Flex, 3> for CausalAttentionBackward {
    type State = SavedAttention;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad_context = grads.consume::<Flex>(&ops.node);
        let [query_node, key_node, value_node] = ops.parents;
        let (grad_query, grad_key, grad_value) = backward(&ops.state, grad_context);
        for (node, grad) in [
            (query_node, grad_query),
            (key_node, grad_key),
            (value_node, grad_value),
        ] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, grad);
            }
        }
    }
}

/// The context (contiguous `[batch, heads, seq_len, head_dim]`) and each query row's
/// log-sum-exp.
fn forward(
    dims: &Dims,
    query: &FlexTensor,
    key: &FlexTensor,
    value: &FlexTensor,
) -> Option<(FlexTensor, Vec<f32>)> {
    let (q, k, v) = (
        Operand::<f32>::new(query)?,
        Operand::<f32>::new(key)?,
        Operand::<f32>::new(value)?,
    );
    let &Dims {
        batch,
        heads,
        seq_len,
        head_dim,
        ..
    } = dims;
    let groups = dims.groups();
    let mut context = super::tensor::zeroed(
        Shape::from(vec![batch, heads, seq_len, head_dim]),
        DType::F32,
    );
    let mut log_sum_exp = vec![0.0f32; batch * heads * seq_len];
    context
        .storage_mut::<f32>()
        .par_chunks_mut(seq_len * head_dim)
        .zip(log_sum_exp.par_chunks_mut(seq_len))
        .enumerate()
        .flat_map(|(sequence_head, (out, lse))| {
            out.par_chunks_mut(QUERY_BLOCK * head_dim)
                .zip(lse.par_chunks_mut(QUERY_BLOCK))
                .enumerate()
                .map(move |(block, (out, lse))| (sequence_head, block, out, lse))
        })
        .for_each_init(Vec::new, |scores, (sequence_head, block, out, lse)| {
            let (b, head) = (sequence_head / heads, sequence_head % heads);
            let kv_head = head / groups;
            let first = block * QUERY_BLOCK;
            let rows = lse.len();
            let keys = dims.visible(first + rows - 1);
            scores.clear();
            scores.resize(rows * keys, 0.0);
            // SAFETY: `Operand::new` checked each operand's whole extent against its storage;
            // rows `first..first + rows` of the queries and `0..keys` of the keys/values are
            // inside their shapes; `scores` and `out` are exclusive buffers of the written size.
            unsafe {
                gemm_product(
                    [rows, keys, head_dim],
                    (scores.as_mut_ptr(), keys),
                    rows_at(&q, b, head, first),
                    transposed(&k, b, kv_head),
                );
            }
            for (row, (scores, lse)) in scores
                .chunks_exact_mut(keys)
                .zip(lse.iter_mut())
                .enumerate()
            {
                *lse = softmax_prefix(scores, dims.visible(first + row), None);
            }
            // SAFETY: as above.
            unsafe {
                gemm_product(
                    [rows, head_dim, keys],
                    (out.as_mut_ptr(), head_dim),
                    (scores.as_ptr(), keys, 1),
                    rows_at(&v, b, kv_head, 0),
                );
            }
        });
    Some((context, log_sum_exp))
}

/// Rows from `first` of `[b, head]` as gemm's `(pointer, row stride, column stride)`.
fn rows_at(
    operand: &Operand<f32>,
    b: usize,
    head: usize,
    first: usize,
) -> (*const f32, usize, usize) {
    let pointer = operand.row_f32(b, head, first).expect("an f32 operand");
    (pointer, operand.strides[2], operand.strides[3])
}

/// `[b, head]`'s rows as the columns of a `head_dim x rows` matrix (`kᵀ`, `vᵀ`).
fn transposed(operand: &Operand<f32>, b: usize, head: usize) -> (*const f32, usize, usize) {
    let pointer = operand.row_f32(b, head, 0).expect("an f32 operand");
    (pointer, operand.strides[3], operand.strides[2])
}

/// The gradients of the query, key and value for `grad_context`, each contiguous in its
/// operand's shape.
fn backward(
    saved: &SavedAttention,
    grad_context: FlexTensor,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let dims = saved.dims;
    let &Dims {
        batch,
        heads,
        kv_heads,
        seq_len,
        kv_len,
        head_dim,
    } = &dims;
    let groups = dims.groups();
    let mutation = current_mutation();
    // The incoming gradient is whatever the ops after this one produced: read in place when it
    // is f32 and readable, made so otherwise.
    let grad_context = if grad_context.dtype() != DType::F32 {
        burn_flex_cast_f32(grad_context)
    } else {
        grad_context
    };
    let grad_context = if Operand::<f32>::new(&grad_context).is_some() {
        grad_context
    } else {
        grad_context.to_contiguous()
    };
    let operand = |t| Operand::<f32>::new(t).expect("checked in the forward pass");
    let (q, k, v, o) = (
        operand(&saved.query),
        operand(&saved.key),
        operand(&saved.value),
        operand(&saved.context),
    );
    let d_o = Operand::<f32>::new(&grad_context).expect("contiguous f32 (made so above)");
    let log_sum_exp = &saved.log_sum_exp;

    let mut grad_query = super::tensor::zeroed(
        Shape::from(vec![batch, heads, seq_len, head_dim]),
        DType::F32,
    );
    // Each (sequence, query head) sums its own key/value gradients; a group's are added below.
    let head_keys = kv_len * head_dim;
    let mut key_parts = vec![0.0f32; batch * heads * head_keys];
    let mut value_parts = vec![0.0f32; batch * heads * head_keys];
    grad_query
        .storage_mut::<f32>()
        .par_chunks_mut(seq_len * head_dim)
        .zip(key_parts.par_chunks_mut(head_keys))
        .zip(value_parts.par_chunks_mut(head_keys))
        .enumerate()
        .for_each_init(
            || (Vec::new(), Vec::new()),
            |(weights, grads), (sequence_head, ((d_q, d_k), d_v))| {
                let (b, head) = (sequence_head / heads, sequence_head % heads);
                let kv_head = head / groups;
                let lse = &log_sum_exp[sequence_head * seq_len..][..seq_len];
                for first in (0..seq_len).step_by(QUERY_BLOCK) {
                    let rows = QUERY_BLOCK.min(seq_len - first);
                    let keys = dims.visible(first + rows - 1);
                    weights.clear();
                    weights.resize(rows * keys, 0.0);
                    grads.clear();
                    grads.resize(rows * keys, 0.0);
                    // SAFETY: as in the forward pass; `d_q`, `d_k`, `d_v` are this task's own
                    // buffers of `seq_len` (queries) and `kv_len` (keys) rows of `head_dim`.
                    unsafe {
                        // Scores, then `dO vᵀ`.
                        gemm_product(
                            [rows, keys, head_dim],
                            (weights.as_mut_ptr(), keys),
                            rows_at(&q, b, head, first),
                            transposed(&k, b, kv_head),
                        );
                        gemm_product(
                            [rows, keys, head_dim],
                            (grads.as_mut_ptr(), keys),
                            rows_at(&d_o, b, head, first),
                            transposed(&v, b, kv_head),
                        );
                    }
                    for row in 0..rows {
                        let at = first + row;
                        let row_dot: f32 = if mutation == Some(Mutation::NoRowDot) {
                            0.0
                        } else {
                            (0..head_dim)
                                .map(|d| d_o.value(b, head, at, d) * o.value(b, head, at, d))
                                .sum()
                        };
                        let visible = if mutation == Some(Mutation::FutureKeysVisible) {
                            keys
                        } else {
                            dims.visible(at)
                        };
                        score_gradients(
                            &mut weights[row * keys..][..keys],
                            &mut grads[row * keys..][..keys],
                            visible,
                            lse[at],
                            row_dot,
                        );
                    }
                    let value_weights = if mutation == Some(Mutation::ValueGradFromScoreGrads) {
                        grads.as_ptr()
                    } else {
                        weights.as_ptr()
                    };
                    // SAFETY: as above; `weights` and `grads` are `rows x keys`, read transposed
                    // (row stride 1, column stride `keys`) for the key/value sums.
                    unsafe {
                        gemm_product(
                            [rows, head_dim, keys],
                            (d_q[first * head_dim..].as_mut_ptr(), head_dim),
                            (grads.as_ptr(), keys, 1),
                            rows_at(&k, b, kv_head, 0),
                        );
                        gemm_into(
                            [keys, head_dim, rows],
                            (d_k.as_mut_ptr(), head_dim),
                            (grads.as_ptr(), 1, keys),
                            rows_at(&q, b, head, first),
                            true,
                        );
                        gemm_into(
                            [keys, head_dim, rows],
                            (d_v.as_mut_ptr(), head_dim),
                            (value_weights, 1, keys),
                            rows_at(&d_o, b, head, first),
                            true,
                        );
                    }
                }
            },
        );
    let sum_groups = |parts: Vec<f32>| -> FlexTensor {
        let shape = Shape::from(vec![batch, kv_heads, kv_len, head_dim]);
        if groups == 1 {
            return FlexTensor::from_data(burn::tensor::TensorData::new(parts, shape));
        }
        let mut sum = super::tensor::zeroed(shape, DType::F32);
        sum.storage_mut::<f32>()
            .par_chunks_mut(head_keys)
            .enumerate()
            .for_each(|(sequence_kv_head, out)| {
                let first_part = sequence_kv_head * groups;
                out.copy_from_slice(&parts[first_part * head_keys..][..head_keys]);
                let summed = if mutation == Some(Mutation::FirstHeadOfGroupOnly) {
                    1
                } else {
                    groups
                };
                for part in 1..summed {
                    let part = &parts[(first_part + part) * head_keys..][..head_keys];
                    for (sum, x) in out.iter_mut().zip(part) {
                        *sum += x;
                    }
                }
            });
        sum
    };
    (grad_query, sum_groups(key_parts), sum_groups(value_parts))
}

/// One query row of the backward pass, in place: `weights` (the scores) become the softmax
/// weights `exp(s - log_sum_exp)` over the `visible` keys and 0 beyond; `grads` (`dO · v_j`)
/// become the score gradients `P_j (grads_j - row_dot)`, 0 beyond the visible keys.
fn score_gradients(
    weights: &mut [f32],
    grads: &mut [f32],
    visible: usize,
    log_sum_exp: f32,
    row_dot: f32,
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma_f16c() {
        // SAFETY: the CPU has the features the function is compiled for (checked above).
        return unsafe { score_gradients_avx2(weights, grads, visible, log_sum_exp, row_dot) };
    }
    score_gradients_portable(weights, grads, visible, log_sum_exp, row_dot)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn score_gradients_avx2(
    weights: &mut [f32],
    grads: &mut [f32],
    visible: usize,
    log_sum_exp: f32,
    row_dot: f32,
) {
    score_gradients_portable(weights, grads, visible, log_sum_exp, row_dot)
}

#[inline(always)]
fn score_gradients_portable(
    weights: &mut [f32],
    grads: &mut [f32],
    visible: usize,
    log_sum_exp: f32,
    row_dot: f32,
) {
    let (live_weights, future_weights) = weights.split_at_mut(visible);
    let (live_grads, future_grads) = grads.split_at_mut(visible);
    for (weight, grad) in live_weights.iter_mut().zip(live_grads.iter_mut()) {
        // `exp` clamps its argument at -87.3; a weight of 1e-38 is what the forward's own
        // vectorized softmax gives such a key too.
        *weight = exp(*weight - log_sum_exp);
        *grad = *weight * (*grad - row_dot);
    }
    future_weights.fill(0.0);
    future_grads.fill(0.0);
}

/// `tensor` converted to f32 (an incoming gradient of another float type).
fn burn_flex_cast_f32(tensor: FlexTensor) -> FlexTensor {
    use burn::tensor::ops::FloatTensorOps;
    Flex::float_cast(tensor, burn::tensor::FloatDType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::flex::tensor::{all_close, Diff};
    use burn::tensor::{Distribution, TensorData};

    /// The same attention with Burn's differentiable ops, as the model's generic path computes
    /// it (key/value heads repeated for their query heads, bottom-right causal mask, softmax).
    fn generic_attention<B: Backend>(
        query: Tensor<B, 4>,
        key: Tensor<B, 4>,
        value: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let [batch, heads, seq_len, head_dim] = query.dims();
        let [_, kv_heads, kv_len, _] = key.dims();
        let groups = heads / kv_heads;
        let repeat = |x: Tensor<B, 4>| {
            x.unsqueeze_dim::<5>(2)
                .expand([batch, kv_heads, groups, kv_len, head_dim])
                .reshape([batch, heads, kv_len, head_dim])
        };
        let scores = query.matmul(repeat(key).swap_dims(2, 3));
        let future: Vec<bool> = (0..seq_len)
            .flat_map(|i| (0..kv_len).map(move |j| j > kv_len - seq_len + i))
            .collect();
        let future = Tensor::<B, 2, burn::tensor::Bool>::from_data(
            TensorData::new(future, [seq_len, kv_len]),
            &scores.device(),
        )
        .unsqueeze::<4>()
        .expand([batch, heads, seq_len, kv_len]);
        let weights =
            burn::tensor::activation::softmax(scores.mask_fill(future, f64::NEG_INFINITY), 3);
        weights.matmul(repeat(value))
    }

    /// Values and gradients of `Σ context ⊙ w` by this kernel (f32) and by Burn's generic ops
    /// in f64, as host vectors: `[context, d_query, d_key, d_value]` each way.
    fn kernel_and_reference(
        [batch, heads, seq_len, head_dim]: [usize; 4],
        kv_heads: usize,
        kv_len: usize,
    ) -> ([Vec<f64>; 4], [Vec<f64>; 4]) {
        let device = Default::default();
        // Queries as the model hands them: a swapped view of `[batch, seq_len, heads, head_dim]`.
        let query = Tensor::<Flex, 4>::random(
            [batch, seq_len, heads, head_dim],
            Distribution::Normal(0.0, 0.6),
            &device,
        );
        let key = Tensor::<Flex, 4>::random(
            [batch, kv_heads, kv_len, head_dim],
            Distribution::Normal(0.0, 0.6),
            &device,
        );
        let value = Tensor::<Flex, 4>::random(
            [batch, kv_heads, kv_len, head_dim],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let weights = Tensor::<Flex, 4>::random(
            [batch, heads, seq_len, head_dim],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let host = |t: Tensor<Flex, 4>| -> Vec<f64> { t.into_data().iter::<f64>().collect() };

        let run = |wide: bool| -> [Vec<f64>; 4] {
            let leaf = |t: &Tensor<Flex, 4>| {
                let t = if wide {
                    t.clone().cast(DType::F64)
                } else {
                    t.clone()
                };
                Tensor::<Diff, 4>::from_inner(t).require_grad()
            };
            let (q, k, v) = (leaf(&query), leaf(&key), leaf(&value));
            let q_heads = q.clone().swap_dims(1, 2);
            let context = if wide {
                generic_attention(q_heads, k.clone(), v.clone())
            } else {
                causal_attention(&q_heads, &k, &v).expect("Autodiff<Flex> f32 takes the kernel")
            };
            let w = Tensor::<Diff, 4>::from_inner(if wide {
                weights.clone().cast(DType::F64)
            } else {
                weights.clone()
            });
            let grads = (context.clone() * w).sum().backward();
            let grad = |t: &Tensor<Diff, 4>| host(t.grad(&grads).expect("a gradient"));
            [
                host(context.inner()),
                host(q.grad(&grads).expect("a query gradient").swap_dims(1, 2)),
                grad(&k),
                grad(&v),
            ]
        };
        (run(false), run(true))
    }

    fn compare(shape: [usize; 4], kv_heads: usize, kv_len: usize) -> Result<(), String> {
        let (kernel, reference) = kernel_and_reference(shape, kv_heads, kv_len);
        all_close(
            &["context", "d_query", "d_key", "d_value"],
            &kernel,
            &reference,
            2e-5,
        )
    }

    #[test]
    fn values_and_gradients_match_burns_generic_ops_in_f64() {
        // Groups of 3 query heads; 70 queries cross a block boundary; 5 slots of history.
        compare([2, 6, 70, 8], 2, 75).unwrap();
        // Multi-head (groups of 1), no history, one short block.
        compare([1, 2, 9, 4], 2, 9).unwrap();
        // One key/value head for all (multi-query), two full blocks plus one row.
        compare([1, 4, 129, 16], 1, 129).unwrap();
    }

    #[test]
    fn every_mutation_of_the_backward_pass_is_caught() {
        let survivors =
            super::super::mutants::surviving("training_attention", &Mutation::ALL, || {
                compare([2, 6, 70, 8], 2, 75)
            });
        assert!(survivors.is_empty(), "{survivors:?} passed the comparison");
        compare([2, 6, 70, 8], 2, 75).unwrap();
    }

    #[test]
    fn inputs_without_gradients_take_the_kernel_untracked() {
        let device = Default::default();
        let q = Tensor::<Diff, 4>::random([1, 2, 5, 4], Distribution::Default, &device);
        let kv = Tensor::<Diff, 4>::random([1, 1, 5, 4], Distribution::Default, &device);
        let context = causal_attention(&q, &kv, &kv).expect("f32 on Autodiff<Flex>");
        let (q, kv) = (q.inner(), kv.inner());
        let reference = generic_attention(q.clone(), kv.clone(), kv.clone());
        let (a, e): (Vec<f64>, Vec<f64>) = (
            context.inner().into_data().iter().collect(),
            reference.into_data().iter().collect(),
        );
        all_close(&["context"], &[a], &[e], 2e-5).unwrap();
        // Other element types and backends are left to Burn's ops.
        let wide = Tensor::<Diff, 4>::from_inner(q.clone().cast(DType::F64));
        let kv_diff = Tensor::<Diff, 4>::from_inner(kv.clone());
        assert!(causal_attention(&wide, &kv_diff, &kv_diff).is_none());
        let plain = q;
        assert!(causal_attention(&plain, &kv, &kv).is_none());
    }
}
