//! The projections' product `x W` with its own backward pass, for training on `Autodiff<Flex>`
//! in f32 (feature `flex`): a custom autodiff operation.
//!
//! Burn's autodiff computes `x W` and, backward, `dy Wᵀ` and `xᵀ dy` with flex's matmul, the
//! same gemm products as here. What differs is each result's buffer: flex 0.21 allocates it
//! through `FlexTensor::empty`, which zeroes a byte vector and copies it into an aligned one
//! (two passes over fresh pages: at SmolLM2's 4 x 512 tokens 7% of a training step's samples
//! were those passes for the products alone). Here gemm writes each result into a fresh,
//! unzeroed buffer, and the transposed operands of the backward pass are read through their
//! strides.
//!
//! # Contract
//! [`linear`] returns `None` (Burn's matmul then runs) for any backend but `Autodiff<Flex>`,
//! any element type but f32, negative strides, a layout reaching outside its buffer, empty
//! dimensions or mismatched inner dimensions. The weight may be any strided view (a
//! checkpoint's `[out, in]` matrix transposed, a tied head's transposed embedding). It saves
//! both operands (shared handles) for the backward pass, as Burn's matmul does.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::{Flex, FlexTensor};

use super::matrix::{product, Matrix};
use super::tensor::{contiguous_f32, diff_float, from_diff};

/// Deliberate errors of the backward pass, switched on only by the tests and `kernel-mutants`
/// builds ([`super::mutants`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(any(test, feature = "kernel-mutants")), allow(dead_code))]
enum Mutation {
    /// The weight's gradient summed over every row but the last (an off-by-one in its inner
    /// dimension).
    LastRowDropped,
    /// The input's gradient never registered (a parent forgotten).
    InputGradientMissing,
}

#[cfg_attr(not(any(test, feature = "kernel-mutants")), allow(dead_code))]
impl Mutation {
    const ALL: [Mutation; 2] = [Mutation::LastRowDropped, Mutation::InputGradientMissing];
}

/// The mutation in force ([`super::mutants`]), read on the thread that runs the backward pass.
fn current_mutation() -> Option<Mutation> {
    super::mutants::active("training_linear", &Mutation::ALL)
}

/// `x W`, differentiable in both, when `B` is `Autodiff<Flex>`, both are f32 and their layouts
/// are readable strided matrices with `x`'s columns equal to `W`'s rows; `None` otherwise.
///
/// # Shapes
/// - x: `[rows, in]`
/// - weight: `[in, out]`
/// - output: `[rows, out]`
pub(crate) fn linear<B: Backend>(x: &Tensor<B, 2>, weight: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    let (x, weight) = (diff_float(x)?, diff_float(weight)?);
    let (lhs, rhs) = (Matrix::new(&x.primitive)?, Matrix::new(&weight.primitive)?);
    if lhs.cols != rhs.rows {
        return None;
    }
    let output = product(&lhs, &rhs, lhs.cols);
    let output = match LinearBackward
        .prepare::<NoCheckpointing>([x.node.clone(), weight.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((x.primitive, weight.primitive), output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    from_diff(output)
}

#[derive(Debug)]
struct LinearBackward;

impl Backward<Flex, 2> for LinearBackward {
    type State = (FlexTensor, FlexTensor);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = contiguous_f32(grads.consume::<Flex>(&ops.node));
        let [x_node, weight_node] = ops.parents;
        let (x, weight) = ops.state;
        let mutation = current_mutation();
        // The saved operands were readable when the forward pass ran, and the incoming gradient
        // is a fresh contiguous `[rows, out]` tensor: none of these can fail.
        let (x, weight, grad) = (
            Matrix::new(&x).expect("saved input"),
            Matrix::new(&weight).expect("saved weight"),
            Matrix::new(&grad).expect("contiguous f32 gradient"),
        );
        if let Some(node) = x_node {
            // dx = dy Wᵀ: `[rows, out] x [out, in]`.
            let grad_x = product(&grad, &weight.transposed(), grad.cols);
            if mutation != Some(Mutation::InputGradientMissing) {
                grads.register::<Flex>(node.id, grad_x);
            }
        }
        if let Some(node) = weight_node {
            // dW = xᵀ dy: `[in, rows] x [rows, out]`, summed over every row.
            let mut rows = x.rows;
            if mutation == Some(Mutation::LastRowDropped) {
                rows -= 1;
            }
            grads.register::<Flex>(node.id, product(&x.transposed(), &grad, rows));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::flex::tensor::{all_close, Diff};
    use burn::tensor::DType;
    use burn::tensor::Distribution;

    /// `[output, dx, dW]` of `Σ (x W) ⊙ r` by the kernel (f32) and by Burn's ops in f64, for a
    /// weight stored contiguous or as the transposed view of an `[out, in]` matrix.
    fn compare_with(
        rows: usize,
        d_input: usize,
        d_output: usize,
        transposed: bool,
    ) -> Result<(), String> {
        let device = Default::default();
        let random = |shape: [usize; 2]| {
            Tensor::<Flex, 2>::random(shape, Distribution::Normal(0.0, 1.0), &device)
        };
        let x = random([rows, d_input]);
        let weight = if transposed {
            random([d_output, d_input]).transpose()
        } else {
            random([d_input, d_output])
        };
        let weights = random([rows, d_output]);
        let run = |kernel: bool| -> [Vec<f64>; 3] {
            let wide = |t: &Tensor<Flex, 2>| {
                if kernel {
                    t.clone()
                } else {
                    t.clone().cast(DType::F64)
                }
            };
            let x = Tensor::<Diff, 2>::from_inner(wide(&x)).require_grad();
            let w = Tensor::<Diff, 2>::from_inner(wide(&weight)).require_grad();
            let out = if kernel {
                linear(&x, &w).expect("f32 on Autodiff<Flex>")
            } else {
                x.clone().matmul(w.clone())
            };
            let grads = (out.clone() * Tensor::from_inner(wide(&weights)))
                .sum()
                .backward();
            let host = |t: Option<Tensor<Flex, 2>>| match t {
                Some(t) => t.into_data().iter::<f64>().collect(),
                None => Vec::new(),
            };
            [
                host(Some(out.inner())),
                host(x.grad(&grads)),
                host(w.grad(&grads)),
            ]
        };
        let (kernel, reference) = (run(true), run(false));
        if kernel[1].len() != reference[1].len() {
            return Err("the input's gradient is missing".into());
        }
        all_close(&["output", "dx", "dW"], &kernel, &reference, 1e-5)
    }

    /// Odd shapes, one row, and products above and below the parallel threshold.
    fn compare() -> Result<(), String> {
        for (rows, d_input, d_output) in [(1, 7, 5), (13, 33, 17), (300, 200, 250)] {
            for transposed in [false, true] {
                compare_with(rows, d_input, d_output, transposed).map_err(|e| {
                    format!("{rows}x{d_input}x{d_output} transposed {transposed}: {e}")
                })?;
            }
        }
        Ok(())
    }

    #[test]
    fn values_and_gradients_match_burns_generic_ops_in_f64() {
        compare().unwrap();
    }

    #[test]
    fn every_mutation_of_the_backward_pass_is_caught() {
        let survivors =
            super::super::mutants::surviving("training_linear", &Mutation::ALL, compare);
        assert!(survivors.is_empty(), "{survivors:?} passed the comparison");
    }

    #[test]
    fn other_types_shapes_and_backends_are_left_to_burn() {
        let device = Default::default();
        let x = Tensor::<Diff, 2>::ones([4, 6], &device);
        let w = Tensor::<Diff, 2>::ones([6, 3], &device);
        assert!(linear(&x, &w).is_some());
        assert!(
            linear(&x, &w.clone().transpose()).is_none(),
            "inner dimensions differ"
        );
        assert!(
            linear(&x.clone().flip([0]), &w).is_none(),
            "negative strides"
        );
        let wide =
            |t: &Tensor<Diff, 2>| Tensor::<Diff, 2>::from_inner(t.clone().inner().cast(DType::F64));
        assert!(linear(&wide(&x), &wide(&w)).is_none());
        let empty = Tensor::<Diff, 2>::ones([0, 6], &device);
        assert!(linear(&empty, &w).is_none());
        assert!(linear(&x.clone().inner(), &w.clone().inner()).is_none());
    }
}
