//! RMS normalization on burn-flex's f32, f16 or bf16 tensors, one pass per row .
//!
//! Burn's `RmsNorm::forward` is eight tensor ops (a cast to f32, square, mean, add, square root,
//! a cast back, divide, scale), each allocating its result: in a decode step, where a row is 576
//! values, the ops' fixed costs are the work, and the model runs 61 norms a step. Here each row's
//! mean square is summed in f32 and the row scaled by `gamma / rms` in one pass, rounded once
//! into the element type; rows are split over rayon's pool when there are many (a prefill).
//!
//! # Contract
//! [`rms_norm`] computes `x / sqrt(mean(x², last axis) + epsilon) * gamma` for a contiguous `x`
//! and a contiguous `gamma` of `x`'s last size and element type (f32, f16 or bf16). It returns
//! `None`, leaving the work to Burn's ops, for any other backend, element type or layout. Its
//! result agrees with Burn's to f32 rounding in f32; in half precision it rounds once where Burn
//! rounds twice.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use burn_flex::FlexTensor;
use half::{bf16, f16};
use rayon::prelude::*;

use super::tensor::{flex_float, from_flex};
use super::vector::{dot, has_avx2_fma_f16c, KernelElement};

/// Values per task: below this (a decode step) the rows are normalized on the calling thread.
const VALUES_PER_TASK: usize = 1 << 15;

/// See the module docs.
pub(crate) fn rms_norm<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    gamma: &Tensor<B, 1>,
    epsilon: f64,
) -> Option<Tensor<B, D>> {
    let (x, gamma) = (flex_float(x)?, flex_float(gamma)?);
    if x.dtype() != gamma.dtype() || x.layout().shape().last() != gamma.layout().shape().first() {
        return None;
    }
    let out = match x.dtype() {
        DType::F32 => normalize::<f32>(&x, &gamma, epsilon as f32),
        DType::F16 => normalize::<f16>(&x, &gamma, epsilon as f32),
        DType::BF16 => normalize::<bf16>(&x, &gamma, epsilon as f32),
        _ => None,
    };
    from_flex(out?)
}

pub(super) fn normalize<E: KernelElement>(
    x: &FlexTensor,
    gamma: &FlexTensor,
    epsilon: f32,
) -> Option<FlexTensor> {
    let width = *gamma.layout().shape().first()?;
    let (x_start, x_end) = x.layout().contiguous_offsets()?;
    let (g_start, g_end) = gamma.layout().contiguous_offsets()?;
    if width == 0 {
        return None;
    }
    let values = &E::storage(x)[x_start..x_end];
    let mut widened_gamma = vec![0.0f32; width];
    E::widen(&E::storage(gamma)[g_start..g_end], &mut widened_gamma);
    let mut out = super::tensor::zeroed(x.layout().shape().clone(), E::DTYPE);
    let rows_per_task = (VALUES_PER_TASK / width).max(1);
    E::storage_mut(&mut out)
        .par_chunks_mut(rows_per_task * width)
        .zip(values.par_chunks(rows_per_task * width))
        .for_each_init(
            || [vec![0.0f32; width], vec![0.0f32; width]],
            |buffers, (out, rows)| normalize_rows(rows, &widened_gamma, epsilon, buffers, out),
        );
    Some(out)
}

/// The rows of `rows` (each `gamma.len()` values) normalized into `out`; `buffers` hold a row
/// widened to f32 and its result.
fn normalize_rows<E: KernelElement>(
    rows: &[E],
    gamma: &[f32],
    epsilon: f32,
    buffers: &mut [Vec<f32>; 2],
    out: &mut [E],
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma_f16c() {
        // SAFETY: the CPU has the features the function is compiled for (checked above).
        return unsafe { normalize_rows_avx2(rows, gamma, epsilon, buffers, out) };
    }
    normalize_rows_portable(rows, gamma, epsilon, buffers, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn normalize_rows_avx2<E: KernelElement>(
    rows: &[E],
    gamma: &[f32],
    epsilon: f32,
    buffers: &mut [Vec<f32>; 2],
    out: &mut [E],
) {
    normalize_rows_portable(rows, gamma, epsilon, buffers, out)
}

#[inline(always)]
fn normalize_rows_portable<E: KernelElement>(
    rows: &[E],
    gamma: &[f32],
    epsilon: f32,
    [row_f32, scaled]: &mut [Vec<f32>; 2],
    out: &mut [E],
) {
    let width = gamma.len();
    for (out, row) in out.chunks_exact_mut(width).zip(rows.chunks_exact(width)) {
        let row = E::as_f32(row).unwrap_or_else(|| {
            E::widen(row, row_f32);
            row_f32
        });
        let mean_square = dot(row, row) / width as f32;
        let inverse_rms = 1.0 / (mean_square + epsilon).sqrt();
        for ((s, &x), &g) in scaled.iter_mut().zip(row).zip(gamma) {
            *s = x * inverse_rms * g;
        }
        E::narrow(scaled, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;
    use burn_flex::Flex;

    use crate::kernels::flex::tensor::f32_values;

    fn reference(x: &[f32], gamma: &[f32], epsilon: f64) -> Vec<f64> {
        x.chunks(gamma.len())
            .flat_map(|row| {
                let mean: f64 =
                    row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / row.len() as f64;
                let inverse = 1.0 / (mean + epsilon).sqrt();
                row.iter()
                    .zip(gamma)
                    .map(move |(&v, &g)| v as f64 * inverse * g as f64)
            })
            .collect()
    }

    #[test]
    fn matches_f64_in_f32_and_f16_on_one_and_several_tasks() {
        let device = Default::default();
        // A decode row; many rows over several tasks; a width with a vector tail.
        for (dims, dtype, tolerance) in [
            ([1, 1, 576], DType::F32, 1e-5),
            ([2, 70, 576], DType::F32, 1e-5),
            ([3, 5, 37], DType::F32, 1e-5),
            ([1, 1, 576], DType::F16, 1e-3),
            ([2, 70, 576], DType::F16, 1e-3),
            ([2, 70, 576], DType::BF16, 8e-3),
        ] {
            let x = Tensor::<Flex, 3>::random(dims, Distribution::Normal(0.5, 2.0), &device)
                .cast(dtype);
            let gamma =
                Tensor::<Flex, 1>::random([dims[2]], Distribution::Default, &device).cast(dtype);
            let out = rms_norm(&x, &gamma, 1e-5).expect("flex takes the kernel");
            assert_eq!((out.dims(), out.dtype()), (dims, dtype));
            let expected = reference(&f32_values(&x), &f32_values(&gamma), 1e-5);
            let worst = f32_values(&out)
                .iter()
                .zip(&expected)
                .map(|(&a, &b)| (a as f64 - b).abs() / (1.0 + b.abs()))
                .fold(0.0, f64::max);
            assert!(worst < tolerance, "{dims:?} {dtype:?}: {worst}");
        }
    }

    #[test]
    fn other_shapes_types_and_layouts_take_the_generic_path() {
        let device = Default::default();
        let x = Tensor::<Flex, 2>::ones([4, 6], &device);
        let gamma = Tensor::<Flex, 1>::ones([6], &device);
        assert!(rms_norm(&x, &Tensor::<Flex, 1>::ones([4], &device), 1e-5).is_none());
        assert!(rms_norm(&x.clone().transpose(), &Tensor::ones([4], &device), 1e-5).is_none());
        assert!(rms_norm(&x.clone().cast(DType::F16), &gamma, 1e-5).is_none());
        let wide = x.cast(DType::F64);
        assert!(rms_norm(&wide, &gamma.cast(DType::F64), 1e-5).is_none());
    }
}
