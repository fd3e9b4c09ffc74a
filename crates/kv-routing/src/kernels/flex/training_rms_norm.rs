//! RMS normalization with its own backward pass, for training on `Autodiff<Flex>` in f32
//! (feature `flex`): a custom autodiff operation.
//!
//! Burn's `RmsNorm::forward` is eight tensor ops whose backward passes add as many again, each
//! a tensor of the activations' size; the model runs 61 norms a step. Here the forward pass is
//! [`super::rms_norm`]'s one pass per row, and the backward pass one more, recomputing each
//! row's `r = 1 / sqrt(mean(x²) + ε)`: with `n = x r` and `dn = dy ⊙ γ`,
//! `dx = r (dn - n mean(dn ⊙ n))` and `dγ = Σ_rows dy ⊙ n`.
//!
//! # Contract
//! [`rms_norm`] computes `x / sqrt(mean(x², last axis) + ε) * γ`, differentiable in `x` and
//! `γ`, and returns `None` (Burn's ops then run) for any backend but `Autodiff<Flex>`, any
//! element type but f32, and operands that are not contiguous or whose sizes disagree. The
//! weight gradient is summed over rows in f32, in per-task partial sums.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::rms_norm::normalize;
use super::tensor::{contiguous_f32, contiguous_values, diff_float, from_diff};

/// Rows per task of the backward pass.
const ROWS_PER_TASK: usize = 64;

/// Deliberate errors of the backward pass, switched on only by the tests and `kernel-mutants` builds ([`super::mutants`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(any(test, feature = "kernel-mutants")), allow(dead_code))]
enum Mutation {
    /// `dx = r dn`: the normalization's own dependence on `x` left out.
    ProjectionMissing,
    /// `dγ` from the last task's rows only.
    WeightGradientOfOneTask,
}

#[cfg_attr(not(any(test, feature = "kernel-mutants")), allow(dead_code))]
impl Mutation {
    const ALL: [Mutation; 2] = [
        Mutation::ProjectionMissing,
        Mutation::WeightGradientOfOneTask,
    ];
}

/// The mutation in force ([`super::mutants`]), read on the thread that runs the backward pass.
fn current_mutation() -> Option<Mutation> {
    super::mutants::active("training_rms_norm", &Mutation::ALL)
}

/// See the module docs.
pub(crate) fn rms_norm<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    gamma: &Tensor<B, 1>,
    epsilon: f64,
) -> Option<Tensor<B, D>> {
    let (x, gamma) = (diff_float(x)?, diff_float(gamma)?);
    let readable = |t: &FlexTensor| t.dtype() == DType::F32 && t.as_slice::<f32>().is_some();
    let width = *gamma.primitive.layout().shape().first()?;
    if !readable(&x.primitive)
        || !readable(&gamma.primitive)
        || gamma.primitive.layout().num_dims() != 1
        || x.primitive.layout().shape().last() != Some(&width)
    {
        return None;
    }
    let output = normalize::<f32>(&x.primitive, &gamma.primitive, epsilon as f32)?;
    let output = match RmsNormBackward
        .prepare::<NoCheckpointing>([x.node.clone(), gamma.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            prep.finish((x.primitive, gamma.primitive, epsilon as f32), output)
        }
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    from_diff(output)
}

#[derive(Debug)]
struct RmsNormBackward;

impl Backward<Flex, 2> for RmsNormBackward {
    type State = (FlexTensor, FlexTensor, f32);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<Flex>(&ops.node);
        let [x_node, gamma_node] = ops.parents;
        let (x, gamma, epsilon) = ops.state;
        let (grad_x, grad_gamma) = backward(&x, &gamma, epsilon, grad);
        if let Some(node) = x_node {
            grads.register::<Flex>(node.id, grad_x);
        }
        if let Some(node) = gamma_node {
            grads.register::<Flex>(node.id, grad_gamma);
        }
    }
}

/// `(dx, dγ)` for the incoming `grad` (made f32 and contiguous if it is not).
fn backward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    epsilon: f32,
    grad: FlexTensor,
) -> (FlexTensor, FlexTensor) {
    let mutation = current_mutation();
    let grad = contiguous_f32(grad);
    let values = contiguous_values;
    let (xs, gamma_values, dys) = (values(x), values(gamma), values(&grad));
    let width = gamma_values.len();
    let mut grad_x = super::tensor::zeroed(x.layout().shape().clone(), DType::F32);
    let partial_sums: Vec<Vec<f32>> = grad_x
        .storage_mut::<f32>()
        .par_chunks_mut(ROWS_PER_TASK * width)
        .zip(xs.par_chunks(ROWS_PER_TASK * width))
        .zip(dys.par_chunks(ROWS_PER_TASK * width))
        .map(|((dx, x), dy)| {
            let mut grad_gamma = vec![0.0f32; width];
            for ((dx, x), dy) in dx
                .chunks_exact_mut(width)
                .zip(x.chunks_exact(width))
                .zip(dy.chunks_exact(width))
            {
                let mean_square = x.iter().map(|v| v * v).sum::<f32>() / width as f32;
                let r = 1.0 / (mean_square + epsilon).sqrt();
                // mean(dn ⊙ n) with dn = dy ⊙ γ, n = x r.
                let projection = x
                    .iter()
                    .zip(dy)
                    .zip(gamma_values)
                    .map(|((x, dy), g)| dy * g * x * r)
                    .sum::<f32>()
                    / width as f32;
                let projection = if mutation == Some(Mutation::ProjectionMissing) {
                    0.0
                } else {
                    projection
                };
                for ((((dx, x), dy), g), dg) in dx
                    .iter_mut()
                    .zip(x)
                    .zip(dy)
                    .zip(gamma_values)
                    .zip(grad_gamma.iter_mut())
                {
                    let n = x * r;
                    *dx = r * (dy * g - n * projection);
                    *dg += dy * n;
                }
            }
            grad_gamma
        })
        .collect();
    let mut grad_gamma = vec![0.0f32; width];
    let summed: &[Vec<f32>] = if mutation == Some(Mutation::WeightGradientOfOneTask) {
        &partial_sums[partial_sums.len() - 1..]
    } else {
        &partial_sums
    };
    for partial in summed {
        for (sum, value) in grad_gamma.iter_mut().zip(partial) {
            *sum += value;
        }
    }
    let grad_gamma = FlexTensor::from_data(burn::tensor::TensorData::new(
        grad_gamma,
        Shape::from(vec![width]),
    ));
    (grad_x, grad_gamma)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::flex::tensor::{all_close, Diff};
    use burn::nn::RmsNormConfig;
    use burn::tensor::Distribution;

    /// `[output, dx, dγ]` of `Σ norm(x) ⊙ w` by the kernel (f32) and by `RmsNorm` in f64.
    fn compare() -> Result<(), String> {
        let device = Default::default();
        let (rows, width) = (150, 77);
        let x = Tensor::<Flex, 3>::random(
            [3, rows / 3, width],
            Distribution::Normal(0.5, 2.0),
            &device,
        );
        let gamma = Tensor::<Flex, 1>::random([width], Distribution::Normal(1.0, 0.5), &device);
        let weights =
            Tensor::<Flex, 3>::random([3, rows / 3, width], Distribution::Default, &device);
        let run = |kernel: bool| -> [Vec<f64>; 3] {
            let wide3 = |t: &Tensor<Flex, 3>| {
                if kernel {
                    t.clone()
                } else {
                    t.clone().cast(DType::F64)
                }
            };
            let wide1 = |t: &Tensor<Flex, 1>| {
                if kernel {
                    t.clone()
                } else {
                    t.clone().cast(DType::F64)
                }
            };
            let input = Tensor::<Diff, 3>::from_inner(wide3(&x)).require_grad();
            let mut norm = RmsNormConfig::new(width)
                .with_epsilon(1e-5)
                .init::<Diff>(&device);
            norm.gamma = burn::module::Param::from_tensor(Tensor::from_inner(wide1(&gamma)));
            let out = if kernel {
                rms_norm(&input, &norm.gamma.val(), 1e-5).expect("f32 on Autodiff<Flex>")
            } else {
                norm.forward(input.clone())
            };
            let grads = (out.clone() * Tensor::from_inner(wide3(&weights)))
                .sum()
                .backward();
            let host = |t: Tensor<Flex, 3>| t.into_data().iter::<f64>().collect();
            [
                host(out.inner()),
                host(input.grad(&grads).unwrap()),
                norm.gamma
                    .grad(&grads)
                    .unwrap()
                    .into_data()
                    .iter::<f64>()
                    .collect(),
            ]
        };
        let (kernel, reference) = (run(true), run(false));
        all_close(&["output", "dx", "d_gamma"], &kernel, &reference, 2e-5)
    }

    #[test]
    fn values_and_gradients_match_burns_rms_norm_in_f64() {
        compare().unwrap();
    }

    #[test]
    fn every_mutation_of_the_backward_pass_is_caught() {
        let survivors =
            super::super::mutants::surviving("training_rms_norm", &Mutation::ALL, compare);
        assert!(survivors.is_empty(), "{survivors:?} passed the comparison");
    }

    #[test]
    fn other_types_layouts_and_backends_are_left_to_burn() {
        let device = Default::default();
        let x = Tensor::<Diff, 2>::ones([4, 6], &device);
        let gamma = Tensor::<Diff, 1>::ones([6], &device);
        assert!(rms_norm(&x, &gamma, 1e-6).is_some());
        assert!(rms_norm(&x.clone().swap_dims(0, 1), &gamma, 1e-6).is_none());
        assert!(rms_norm(&x, &Tensor::<Diff, 1>::ones([4], &device), 1e-6).is_none());
        let wide = Tensor::<Diff, 2>::from_inner(x.clone().inner().cast(DType::F64));
        assert!(rms_norm(&wide, &gamma, 1e-6).is_none());
        assert!(rms_norm(&x.inner(), &gamma.inner(), 1e-6).is_none());
    }
}
