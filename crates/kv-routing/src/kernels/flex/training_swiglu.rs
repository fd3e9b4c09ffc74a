//! SwiGLU's gate `silu(gate) * up` with its own backward pass, for training on `Autodiff<Flex>`
//! in f32 (feature `flex`): a custom autodiff operation.
//!
//! Burn's autodiff computes `silu(gate) * up` as a sigmoid, two products and, backward, five
//! element-wise ops more, each a tensor of the MLP's width (12.6 MB per layer at SmolLM2's
//! 4 x 512 tokens). Here the forward pass is [`super::swiglu`]'s one vectorized pass, and the
//! backward pass one more: with `s = sigmoid(g)`, `d_up = d · g s` and
//! `d_gate = d · u s (1 + g (1 - s))`.
//!
//! # Contract
//! [`swiglu`] returns `None` (Burn's ops then run) for any backend but `Autodiff<Flex>`, any
//! element type but f32, operands of different shapes or not contiguous. It saves the two
//! operands (shared handles) for the backward pass.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::swiglu::gated;
use super::tensor::{contiguous_f32, contiguous_values, diff_float, from_diff};
use super::vector::{exp, has_avx2_fma_f16c};

/// Values per task of the backward pass.
const VALUES_PER_TASK: usize = 1 << 15;

/// Deliberate errors of the backward pass, switched on only by the tests and `kernel-mutants` builds ([`super::mutants`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(any(test, feature = "kernel-mutants")), allow(dead_code))]
enum Mutation {
    /// `d_gate` without the sigmoid's own derivative (`d · u s`).
    SigmoidDerivativeMissing,
    /// The two gradients handed to each other's operand.
    GradientsSwapped,
}

#[cfg_attr(not(any(test, feature = "kernel-mutants")), allow(dead_code))]
impl Mutation {
    const ALL: [Mutation; 2] = [
        Mutation::SigmoidDerivativeMissing,
        Mutation::GradientsSwapped,
    ];
}

/// The mutation in force ([`super::mutants`]), read on the thread that runs the backward pass.
fn current_mutation() -> Option<Mutation> {
    super::mutants::active("training_swiglu", &Mutation::ALL)
}

/// `silu(gate) * up`, differentiable in both, when `B` is `Autodiff<Flex>` and both are f32,
/// contiguous and of one shape; `None` otherwise.
pub(crate) fn swiglu<B: Backend, const D: usize>(
    gate: &Tensor<B, D>,
    up: &Tensor<B, D>,
) -> Option<Tensor<B, D>> {
    let (gate, up) = (diff_float(gate)?, diff_float(up)?);
    let readable = |t: &FlexTensor| t.dtype() == DType::F32 && t.as_slice::<f32>().is_some();
    if gate.primitive.layout().shape() != up.primitive.layout().shape()
        || !readable(&gate.primitive)
        || !readable(&up.primitive)
    {
        return None;
    }
    let output = gated::<f32>(&gate.primitive, &up.primitive)?;
    let output = match SwigluBackward
        .prepare::<NoCheckpointing>([gate.node.clone(), up.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((gate.primitive, up.primitive), output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    };
    from_diff(output)
}

#[derive(Debug)]
struct SwigluBackward;

impl Backward<Flex, 2> for SwigluBackward {
    type State = (FlexTensor, FlexTensor);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad = grads.consume::<Flex>(&ops.node);
        let [gate_node, up_node] = ops.parents;
        let (gate, up) = ops.state;
        let (mut grad_gate, mut grad_up) = backward(&gate, &up, grad);
        if current_mutation() == Some(Mutation::GradientsSwapped) {
            std::mem::swap(&mut grad_gate, &mut grad_up);
        }
        if let Some(node) = gate_node {
            grads.register::<Flex>(node.id, grad_gate);
        }
        if let Some(node) = up_node {
            grads.register::<Flex>(node.id, grad_up);
        }
    }
}

/// `(d_gate, d_up)` for the incoming `grad` (made f32 and contiguous if it is not).
fn backward(gate: &FlexTensor, up: &FlexTensor, grad: FlexTensor) -> (FlexTensor, FlexTensor) {
    let grad = contiguous_f32(grad);
    let values = contiguous_values;
    let (g, u, d) = (values(gate), values(up), values(&grad));
    let shape = gate.layout().shape().clone();
    let mut grad_gate = super::tensor::zeroed(shape.clone(), DType::F32);
    let mut grad_up = super::tensor::zeroed(shape, DType::F32);
    let sigmoid_derivative = current_mutation() != Some(Mutation::SigmoidDerivativeMissing);
    grad_gate
        .storage_mut::<f32>()
        .par_chunks_mut(VALUES_PER_TASK)
        .zip(grad_up.storage_mut::<f32>().par_chunks_mut(VALUES_PER_TASK))
        .zip(g.par_chunks(VALUES_PER_TASK))
        .zip(u.par_chunks(VALUES_PER_TASK))
        .zip(d.par_chunks(VALUES_PER_TASK))
        .for_each(|((((dg, du), g), u), d)| gradients(g, u, d, dg, du, sigmoid_derivative));
    (grad_gate, grad_up)
}

fn gradients(g: &[f32], u: &[f32], d: &[f32], dg: &mut [f32], du: &mut [f32], full: bool) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma_f16c() {
        // SAFETY: the CPU has the features the function is compiled for (checked above).
        return unsafe { gradients_avx2(g, u, d, dg, du, full) };
    }
    gradients_portable(g, u, d, dg, du, full)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gradients_avx2(
    g: &[f32],
    u: &[f32],
    d: &[f32],
    dg: &mut [f32],
    du: &mut [f32],
    full: bool,
) {
    gradients_portable(g, u, d, dg, du, full)
}

/// The sigmoid as the forward pass computes it (`t = e^-|g|`, accurate where `t <= 1`).
#[inline(always)]
fn gradients_portable(g: &[f32], u: &[f32], d: &[f32], dg: &mut [f32], du: &mut [f32], full: bool) {
    for ((((&g, &u), &d), dg), du) in g.iter().zip(u).zip(d).zip(dg.iter_mut()).zip(du.iter_mut()) {
        let t = exp(-g.abs());
        let s = if g >= 0.0 { 1.0 } else { t } / (1.0 + t);
        *du = d * g * s;
        let derivative = if full { 1.0 + g * (1.0 - s) } else { 1.0 };
        *dg = d * u * s * derivative;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::flex::tensor::{all_close, Diff};
    use burn::tensor::activation::silu;
    use burn::tensor::Distribution;

    /// `[output, d_gate, d_up]` of `Σ swiglu ⊙ w` by the kernel (f32) and by Burn's ops in f64.
    fn compare() -> Result<(), String> {
        let device = Default::default();
        let shape = [3, 7, 1001];
        let random =
            |std| Tensor::<Flex, 3>::random(shape, Distribution::Normal(0.0, std), &device);
        let (gate, up, weights) = (random(4.0), random(1.0), random(1.0));
        let run = |kernel: bool| -> [Vec<f64>; 3] {
            let wide = |t: &Tensor<Flex, 3>| {
                if kernel {
                    t.clone()
                } else {
                    t.clone().cast(DType::F64)
                }
            };
            let g = Tensor::<Diff, 3>::from_inner(wide(&gate)).require_grad();
            let u = Tensor::<Diff, 3>::from_inner(wide(&up)).require_grad();
            let out = if kernel {
                swiglu(&g, &u).expect("f32 on Autodiff<Flex>")
            } else {
                silu(g.clone()) * u.clone()
            };
            let grads = (out.clone() * Tensor::from_inner(wide(&weights)))
                .sum()
                .backward();
            let host = |t: Tensor<Flex, 3>| t.into_data().iter::<f64>().collect();
            [
                host(out.inner()),
                host(g.grad(&grads).unwrap()),
                host(u.grad(&grads).unwrap()),
            ]
        };
        let (kernel, reference) = (run(true), run(false));
        all_close(&["output", "d_gate", "d_up"], &kernel, &reference, 1e-5)
    }

    #[test]
    fn values_and_gradients_match_burns_generic_ops_in_f64() {
        compare().unwrap();
    }

    #[test]
    fn every_mutation_of_the_backward_pass_is_caught() {
        let survivors =
            super::super::mutants::surviving("training_swiglu", &Mutation::ALL, compare);
        assert!(survivors.is_empty(), "{survivors:?} passed the comparison");
    }

    #[test]
    fn other_types_layouts_and_backends_are_left_to_burn() {
        let device = Default::default();
        let t = Tensor::<Diff, 2>::ones([4, 6], &device);
        assert!(swiglu(&t, &t).is_some());
        assert!(swiglu(&t.clone().swap_dims(0, 1), &t.clone().swap_dims(0, 1)).is_none());
        let wide = Tensor::<Diff, 2>::from_inner(t.clone().inner().cast(DType::F64));
        assert!(swiglu(&wide, &wide).is_none());
        let plain = t.inner();
        assert!(swiglu(&plain, &plain).is_none());
    }
}
