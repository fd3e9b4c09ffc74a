//! The rotary embedding of a step's queries or keys in one pass, on burn-flex's f32 tensors
//! (feature `flex`), with its own backward pass on `Autodiff<Flex>` (a custom autodiff
//! operation).
//!
//! [`crate::RopeAngles::apply`] is `x * [cos, cos] + [x2, x1] * [-sin, sin]` in Burn's ops: two
//! slices, a concatenation and three element-wise ops forward, each allocating a tensor of `x`'s
//! size, and backward the slices' gradients built by writing into zeroed tensors, then summed.
//! Here each row (one head of one position) is rotated in one pass reading the position's table
//! row, and the backward pass is the transposed rotation: with `σ` the swap of the two halves,
//! `y_j = x_j c_j + x_σ(j) s_j` gives `dx_k = dy_k c_k + dy_σ(k) s_σ(k)`.
//!
//! # Contract
//! [`rotate`] takes `x` `[batch, seq_len, heads, head_dim]` and the tables `[cos, cos]`,
//! `[-sin, sin]` `[batch, seq_len, 1, head_dim]` of [`crate::RopeAngles`], all f32 and
//! contiguous, and returns the rotation, differentiable in `x` on `Autodiff<Flex>` (the tables
//! are constants); on plain flex all three may also be f16 or bf16 (of any layout: widened to
//! f32, rotated, rounded once); `None` (Burn's ops then run) for any other backend, element
//! type, layout or shape.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::tensor::{
    contiguous_f32, contiguous_values, diff_float, flex_float, from_diff, from_flex, narrowed_half,
    widened_half,
};

/// Rows (heads of positions) per task.
const ROWS_PER_TASK: usize = 256;

/// Deliberate errors of the backward pass, switched on only by the tests and `kernel-mutants`
/// builds ([`super::mutants`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(any(test, feature = "kernel-mutants")), allow(dead_code))]
enum Mutation {
    /// The forward rotation applied to the gradient instead of its transpose.
    ForwardRotationBackward,
}

#[cfg_attr(not(any(test, feature = "kernel-mutants")), allow(dead_code))]
impl Mutation {
    const ALL: [Mutation; 1] = [Mutation::ForwardRotationBackward];
}

/// The mutation in force ([`super::mutants`]), read on the thread that runs the backward pass.
fn current_mutation() -> Option<Mutation> {
    super::mutants::active("rotary", &Mutation::ALL)
}

/// See the module docs.
pub(crate) fn rotate<B: Backend>(
    x: &Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
) -> Option<Tensor<B, 4>> {
    if let Some(x) = flex_float(x) {
        let (cos, sin) = (flex_float(cos)?, flex_float(sin)?);
        let half = matches!(x.dtype(), DType::F16 | DType::BF16);
        if half && cos.dtype() == x.dtype() && sin.dtype() == x.dtype() {
            // Half precision (inference only): widened, rotated in f32, rounded once. Burn's
            // ops would run five element-wise passes over x in flex's scalar half arithmetic.
            let dtype = x.dtype();
            let (x, cos, sin) = (widened_half(&x)?, widened_half(&cos)?, widened_half(&sin)?);
            check(&x, &cos, &sin)?;
            let rotated = rotation(&x, &cos, &sin, Direction::Forward);
            return from_flex(narrowed_half(&rotated, dtype)?);
        }
        check(&x, &cos, &sin)?;
        return from_flex(rotation(&x, &cos, &sin, Direction::Forward));
    }
    let x = diff_float(x)?;
    let (cos, sin) = (diff_float(cos)?.primitive, diff_float(sin)?.primitive);
    check(&x.primitive, &cos, &sin)?;
    let output = rotation(&x.primitive, &cos, &sin, Direction::Forward);
    let output = match RotaryBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((cos, sin), output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    from_diff(output)
}

/// `Some(())` when the operands are f32, contiguous and of matching shapes.
fn check(x: &FlexTensor, cos: &FlexTensor, sin: &FlexTensor) -> Option<()> {
    let readable = |t: &FlexTensor| t.dtype() == DType::F32 && t.as_slice::<f32>().is_some();
    let (shape, table) = (x.layout().shape(), cos.layout().shape());
    let agree = shape.num_dims() == 4
        && table.num_dims() == 4
        && sin.layout().shape() == table
        && [table[0], table[1], table[2], table[3]] == [shape[0], shape[1], 1, shape[3]]
        && shape[3] % 2 == 0
        && shape.num_elements() > 0;
    (agree && readable(x) && readable(cos) && readable(sin)).then_some(())
}

/// The rotation or its transpose.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Forward,
    Transposed,
}

/// `x` (or an incoming gradient) rotated by the tables, as a new contiguous tensor.
fn rotation(
    x: &FlexTensor,
    cos: &FlexTensor,
    sin: &FlexTensor,
    direction: Direction,
) -> FlexTensor {
    let shape = x.layout().shape().clone();
    let (heads, head_dim) = (shape[2], shape[3]);
    let half = head_dim / 2;
    let (values, cos, sin) = (
        contiguous_values(x),
        contiguous_values(cos),
        contiguous_values(sin),
    );
    let mut out = super::tensor::zeroed(shape, DType::F32);
    out.storage_mut::<f32>()
        .par_chunks_mut(ROWS_PER_TASK * head_dim)
        .zip(values.par_chunks(ROWS_PER_TASK * head_dim))
        .enumerate()
        .for_each(|(task, (out, x))| {
            for (i, (out, x)) in out
                .chunks_exact_mut(head_dim)
                .zip(x.chunks_exact(head_dim))
                .enumerate()
            {
                // The table row of this row's position.
                let position = (task * ROWS_PER_TASK + i) / heads;
                let c = &cos[position * head_dim..][..head_dim];
                let s = &sin[position * head_dim..][..head_dim];
                for j in 0..head_dim {
                    let partner = if j < half { j + half } else { j - half };
                    out[j] = x[j] * c[j]
                        + match direction {
                            Direction::Forward => x[partner] * s[j],
                            Direction::Transposed => x[partner] * s[partner],
                        };
                }
            }
        });
    out
}

#[derive(Debug)]
struct RotaryBackward;

impl Backward<Flex, 1> for RotaryBackward {
    type State = (FlexTensor, FlexTensor);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = contiguous_f32(grads.consume::<Flex>(&ops.node));
        let [x_node] = ops.parents;
        let (cos, sin) = ops.state;
        let direction = if current_mutation() == Some(Mutation::ForwardRotationBackward) {
            Direction::Forward
        } else {
            Direction::Transposed
        };
        if let Some(node) = x_node {
            grads.register::<Flex>(node.id, rotation(&grad, &cos, &sin, direction));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::flex::tensor::Diff;
    use burn::tensor::{Distribution, TensorData};

    /// `[cos, cos]`, `[-sin, sin]` tables `[batch, seq_len, 1, head_dim]` for arbitrary angles.
    fn tables(batch: usize, seq_len: usize, head_dim: usize) -> [Tensor<Flex, 4>; 2] {
        let half = head_dim / 2;
        let mut cos = Vec::new();
        let mut sin = Vec::new();
        for row in 0..batch * seq_len {
            for j in 0..head_dim {
                let angle = (row * 7 + (j % half) * 3) as f64 * 0.37;
                cos.push(angle.cos() as f32);
                sin.push(if j < half { -angle.sin() } else { angle.sin() } as f32);
            }
        }
        let shape = [batch, seq_len, 1, head_dim];
        let device = Default::default();
        [
            Tensor::from_data(TensorData::new(cos, shape), &device),
            Tensor::from_data(TensorData::new(sin, shape), &device),
        ]
    }

    /// Burn's ops, as `RopeAngles::apply` computes the rotation.
    fn generic<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 4>, sin: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, seq_len, heads, head_dim] = x.dims();
        let half = head_dim / 2;
        let x1 = x.clone().slice([0..batch, 0..seq_len, 0..heads, 0..half]);
        let x2 = x
            .clone()
            .slice([0..batch, 0..seq_len, 0..heads, half..head_dim]);
        let shape = [batch, seq_len, heads, head_dim];
        x * cos.expand(shape) + Tensor::cat(vec![x2, x1], 3) * sin.expand(shape)
    }

    fn compare() -> Result<(), String> {
        let device = Default::default();
        // 3 x 100 x 3 = 900 rows: several tasks, the last one partial.
        let shape = [3, 100, 3, 8];
        let x = Tensor::<Flex, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let weights = Tensor::<Flex, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let [cos, sin] = tables(3, 100, 8);
        let run = |kernel: bool| -> [Vec<f64>; 2] {
            let wide = |t: &Tensor<Flex, 4>| {
                if kernel {
                    t.clone()
                } else {
                    t.clone().cast(DType::F64)
                }
            };
            let input = Tensor::<Diff, 4>::from_inner(wide(&x)).require_grad();
            let (c, s) = (
                Tensor::from_inner(wide(&cos)),
                Tensor::from_inner(wide(&sin)),
            );
            let out = if kernel {
                rotate(&input, &c, &s).expect("f32 on Autodiff<Flex>")
            } else {
                generic(input.clone(), c, s)
            };
            let grads = (out.clone() * Tensor::from_inner(wide(&weights)))
                .sum()
                .backward();
            let host = |t: Tensor<Flex, 4>| t.into_data().iter::<f64>().collect();
            [host(out.inner()), host(input.grad(&grads).unwrap())]
        };
        let (kernel, reference) = (run(true), run(false));
        for (name, (k, r)) in ["output", "dx"].iter().zip(kernel.iter().zip(&reference)) {
            if let Some((i, (a, e))) = k
                .iter()
                .zip(r)
                .enumerate()
                .find(|(_, (a, e))| (*a - *e).abs() > 1e-6 || a.is_nan())
            {
                return Err(format!("{name}[{i}]: {a} against {e}"));
            }
        }
        Ok(())
    }

    #[test]
    fn values_and_gradients_match_burns_ops_in_f64() {
        compare().unwrap();
    }

    #[test]
    fn every_mutation_of_the_backward_pass_is_caught() {
        let survivors = super::super::mutants::surviving("rotary", &Mutation::ALL, compare);
        assert!(survivors.is_empty(), "{survivors:?} passed the comparison");
    }

    #[test]
    fn plain_flex_matches_and_other_shapes_and_types_are_left_to_burn() {
        let device = Default::default();
        let x = Tensor::<Flex, 4>::random([2, 5, 3, 6], Distribution::Default, &device);
        let [cos, sin] = tables(2, 5, 6);
        let got: Vec<f32> = rotate(&x, &cos, &sin)
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap();
        let want: Vec<f32> = generic(x.clone(), cos.clone(), sin.clone())
            .into_data()
            .to_vec()
            .unwrap();
        assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-6));
        // Tables of another batch, a non-contiguous input, f64: Burn's ops.
        let [other_cos, other_sin] = tables(1, 5, 6);
        assert!(rotate(&x, &other_cos, &other_sin).is_none());
        assert!(rotate(
            &x.clone()
                .swap_dims(1, 2)
                .swap_dims(1, 2)
                .swap_dims(0, 1)
                .swap_dims(0, 1),
            &cos,
            &sin
        )
        .is_some());
        let strided = x.clone().swap_dims(0, 1);
        let [c5, s5] = tables(5, 2, 6);
        assert!(rotate(&strided, &c5, &s5).is_none());
        let wide = x.clone().cast(DType::F64);
        assert!(rotate(
            &wide,
            &cos.clone().cast(DType::F64),
            &sin.clone().cast(DType::F64)
        )
        .is_none());
        // Mixed element types: Burn's ops.
        assert!(rotate(&x.clone().cast(DType::F16), &cos, &sin).is_none());
    }

    #[test]
    fn half_precision_is_rotated_in_f32_and_rounded_once() {
        let device = Default::default();
        for (dtype, tolerance) in [(DType::F16, 2e-3), (DType::BF16, 1.6e-2)] {
            // A strided input (the queries as a swapped view), as half-precision models hand
            // them over.
            let x = Tensor::<Flex, 4>::random([2, 3, 5, 8], Distribution::Default, &device)
                .cast(dtype)
                .swap_dims(1, 2);
            let [cos, sin] = tables(2, 5, 8).map(|t| t.cast(dtype));
            let out = rotate(&x, &cos, &sin).expect("half precision on plain flex");
            assert_eq!((out.dims(), out.dtype()), ([2, 5, 3, 8], dtype));
            // The rotation of the half values, in f64.
            let expected: Vec<f64> = generic(
                x.cast(DType::F64),
                cos.cast(DType::F64),
                sin.cast(DType::F64),
            )
            .into_data()
            .iter::<f64>()
            .collect();
            let worst = out
                .into_data()
                .iter::<f64>()
                .zip(&expected)
                .map(|(a, e)| (a - e).abs() / (1.0 + e.abs()))
                .fold(0.0, f64::max);
            assert!(worst < tolerance, "{dtype:?}: {worst}");
        }
    }
}
