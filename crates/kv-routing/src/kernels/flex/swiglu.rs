//! SwiGLU's gate, `silu(gate) * up`, on burn-flex's f32, f16 or bf16 tensors in one vectorized,
//! parallel pass .
//!
//! flex computes `silu` element by element with the C library's `expf`, on the calling thread,
//! and then multiplies in a second pass: 8.5% of a SmolLM2-135M prefill of 512 tokens
//! (docs/benchmarks.md). Here one pass over both operands computes `g * sigmoid(g) * u` with the
//! vectorized exponential of [`super::vector`], split over rayon's pool for large tensors.
//! f16 operands are widened to f32 a block at a time and the result rounded once.
//!
//! # Contract
//! [`swiglu`] returns `None`, leaving the work to Burn's ops, for any other backend, element type,
//! for operands of different shapes or that are not contiguous.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use half::{bf16, f16};

use super::tensor::{flex_float, from_flex};
use super::vector::{exp, has_avx2_fma_f16c, KernelElement};

/// Values per task: below this a tensor (a decode step's) is computed on the calling thread.
const VALUES_PER_TASK: usize = 1 << 15;

/// `silu(gate) * up` for flex f32, f16 or bf16 tensors of one shape and type, both contiguous;
/// `None`
/// otherwise.
pub(crate) fn swiglu<B: Backend, const D: usize>(
    gate: &Tensor<B, D>,
    up: &Tensor<B, D>,
) -> Option<Tensor<B, D>> {
    let (gate, up) = (flex_float(gate)?, flex_float(up)?);
    if gate.layout().shape() != up.layout().shape() || gate.dtype() != up.dtype() {
        return None;
    }
    let out = match gate.dtype() {
        DType::F32 => gated::<f32>(&gate, &up),
        DType::F16 => gated::<f16>(&gate, &up),
        DType::BF16 => gated::<bf16>(&gate, &up),
        _ => None,
    };
    from_flex(out?)
}

pub(super) fn gated<E: KernelElement>(gate: &FlexTensor, up: &FlexTensor) -> Option<FlexTensor> {
    let contiguous = |t: &FlexTensor| t.layout().contiguous_offsets();
    let ((g_start, g_end), (u_start, u_end)) = (contiguous(gate)?, contiguous(up)?);
    let (g, u) = (
        &E::storage(gate)[g_start..g_end],
        &E::storage(up)[u_start..u_end],
    );
    let mut out = super::tensor::zeroed(gate.layout().shape().clone(), E::DTYPE);
    E::storage_mut(&mut out)
        .par_chunks_mut(VALUES_PER_TASK)
        .zip(g.par_chunks(VALUES_PER_TASK))
        .zip(u.par_chunks(VALUES_PER_TASK))
        .for_each(|((out, g), u)| {
            if let (Some(g), Some(u), Some(out)) = (E::as_f32(g), E::as_f32(u), E::as_f32_mut(out))
            {
                return gate_values(g, u, out);
            }
            // Other types a block at a time, widened into (and rounded from) f32 buffers.
            let mut buffers = [[0.0f32; WIDENED_BLOCK]; 3];
            for ((out, g), u) in out
                .chunks_mut(WIDENED_BLOCK)
                .zip(g.chunks(WIDENED_BLOCK))
                .zip(u.chunks(WIDENED_BLOCK))
            {
                let [gw, uw, ow] = &mut buffers;
                let n = out.len();
                E::widen(g, &mut gw[..n]);
                E::widen(u, &mut uw[..n]);
                gate_values(&gw[..n], &uw[..n], &mut ow[..n]);
                E::narrow(&ow[..n], out);
            }
        });
    Some(out)
}

/// Values widened at a time for element types other than f32 (three stack buffers of 1 KiB).
const WIDENED_BLOCK: usize = 256;

fn gate_values(g: &[f32], u: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma_f16c() {
        // SAFETY: the CPU has the features the function is compiled for (checked above).
        return unsafe { gate_values_avx2(g, u, out) };
    }
    gate_values_portable(g, u, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gate_values_avx2(g: &[f32], u: &[f32], out: &mut [f32]) {
    gate_values_portable(g, u, out)
}

/// `g * sigmoid(g) * u`, with `sigmoid(g)` from `t = e^-|g|` (at most 1, where the exponential
/// is accurate): `1 / (1 + t)` for `g >= 0`, `t / (1 + t)` below.
#[inline(always)]
fn gate_values_portable(g: &[f32], u: &[f32], out: &mut [f32]) {
    for ((out, &g), &u) in out.iter_mut().zip(g).zip(u) {
        let t = exp(-g.abs());
        let numerator = if g >= 0.0 { 1.0 } else { t };
        *out = g * (numerator / (1.0 + t)) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;
    use burn_flex::Flex;

    use crate::kernels::flex::tensor::f32_values;

    #[test]
    fn matches_f64_silu_times_up_on_one_and_several_tasks() {
        let device = Default::default();
        // One task, several tasks with a short last one; values far into both tails.
        for shape in [[1, 3, 7], [2, 300, 129]] {
            let gate =
                Tensor::<Flex, 3>::random(shape, Distribution::Uniform(-30.0, 30.0), &device);
            let up = Tensor::<Flex, 3>::random(shape, Distribution::Default, &device);
            let out = swiglu(&gate, &up).expect("flex f32 takes the fast path");
            let (g, u, o) = (f32_values(&gate), f32_values(&up), f32_values(&out));
            for i in 0..g.len() {
                let x = g[i] as f64;
                let expected = x / (1.0 + (-x).exp()) * u[i] as f64;
                assert!(
                    (o[i] as f64 - expected).abs() <= 1e-6 * (1.0 + expected.abs()),
                    "silu({x}) * {}: {} against {expected}",
                    u[i],
                    o[i]
                );
            }
        }
    }

    #[test]
    fn half_precision_matches_f64_of_its_values_across_widened_blocks() {
        let device = Default::default();
        // More values than a widened block, and a short last block. One rounding of each
        // result: 2^-11 (f16) or 2^-8 (bf16) relative.
        let shape = [3, 7, 100];
        for (dtype, tolerance) in [(DType::F16, 1e-3), (DType::BF16, 8e-3)] {
            let half = |d| Tensor::<Flex, 3>::random(shape, d, &device).cast(dtype);
            let (gate, up) = (
                half(Distribution::Uniform(-12.0, 12.0)),
                half(Distribution::Default),
            );
            let out = swiglu(&gate, &up).expect("flex half precision takes the fast path");
            assert_eq!(out.dtype(), dtype);
            let (g, u, o) = (f32_values(&gate), f32_values(&up), f32_values(&out));
            for i in 0..g.len() {
                let x = g[i] as f64;
                let expected = x / (1.0 + (-x).exp()) * u[i] as f64;
                assert!(
                    (o[i] as f64 - expected).abs() <= tolerance * (1e-3 + expected.abs()),
                    "{dtype:?} silu({x}) * {}: {} against {expected}",
                    u[i],
                    o[i]
                );
            }
        }
    }

    #[test]
    fn other_shapes_types_and_layouts_take_the_generic_path() {
        let device = Default::default();
        let a = Tensor::<Flex, 2>::ones([4, 6], &device);
        let b = Tensor::<Flex, 2>::ones([6, 4], &device);
        assert!(swiglu(&a, &b).is_none());
        assert!(swiglu(&a, &b.clone().transpose()).is_none());
        let half = a.clone().cast(DType::F16);
        assert!(swiglu(&half, &a).is_none());
        let wide = a.clone().cast(DType::F64);
        assert!(swiglu(&wide, &wide).is_none());
    }
}
