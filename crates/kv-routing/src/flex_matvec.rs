//! One-row products `x W` on burn-flex's f32 tensors, spread over rayon's pool (feature `flex`).
//!
//! A batch-1 decode step multiplies one row by every weight of the model: it is a stream of the
//! weights from memory, and its speed is the bandwidth the stream gets. flex hands these
//! products to gemm, whose matrix-vector path runs on one thread below flex's 192³-operation
//! threshold (every projection of a small model), and one thread reads 32 GB/s here where two
//! read 43 (`bandwidth_probe`; docs/benchmarks.md). This kernel splits the outputs over the
//! pool's threads so that every core streams its share of the weight.
//!
//! # Contract
//! [`matvec`] computes `y = x W` for `x` `[1, in]` and `W` `[in, out]`, both flex f32, with `W`
//! either the transposed view of a checkpoint's `[out, in]` matrix (each output a dot product
//! with a contiguous row) or contiguous `[in, out]` (each input row scaled into the outputs).
//! It returns `None`, leaving the product to the backend's matmul, for any other backend, element
//! type or layout. The sums are in another order than gemm's: results agree to f32 rounding, not
//! bit for bit.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::flex_tensor::{flex_f32, from_flex};

/// Weights smaller than this (values) are multiplied on the calling thread: below it, handing
/// the halves to the pool costs more than the second core's bandwidth saves.
const PARALLEL_VALUES: usize = 1 << 16;

/// Outputs per task: enough tasks for the pool to balance, each streaming at least tens of
/// kilobytes of weight.
const TASKS_PER_THREAD: usize = 4;

/// `x W` for `x` `[1, in]` and `W` `[in, out]` flex f32 tensors; `None` otherwise (see the
/// module docs).
pub(crate) fn matvec<B: Backend>(x: &Tensor<B, 2>, weight: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    let x = flex_f32(x)?;
    let weight = flex_f32(weight)?;
    let [rows, d_input] = dims(&x);
    let [weight_input, d_output] = dims(&weight);
    if rows != 1 || weight_input != d_input || d_input == 0 || d_output == 0 {
        return None;
    }
    let x_values = x.as_slice::<f32>()?;
    let layout = weight.layout();
    let (start, strides) = (layout.start_offset(), layout.strides());
    let storage = weight.storage::<f32>();
    let (input_stride, output_stride) = (strides[0], strides[1]);
    let layout = if input_stride == 1 && output_stride >= d_input as isize {
        WeightLayout::RowPerOutput {
            row_stride: output_stride as usize,
        }
    } else if output_stride == 1 && input_stride >= d_output as isize {
        WeightLayout::RowPerInput {
            row_stride: input_stride as usize,
        }
    } else {
        return None;
    };
    let weight_values = &storage[start..];

    let mut y = FlexTensor::empty(Shape::from(vec![1, d_output]), DType::F32);
    let out = y.storage_mut::<f32>();
    let product = |first: usize, out: &mut [f32]| match layout {
        WeightLayout::RowPerOutput { row_stride } => {
            dot_rows(weight_values, row_stride, first, x_values, out)
        }
        WeightLayout::RowPerInput { row_stride } => {
            scale_rows(weight_values, row_stride, first, x_values, out)
        }
    };
    if d_input * d_output < PARALLEL_VALUES {
        product(0, out);
    } else {
        let tasks = rayon::current_num_threads() * TASKS_PER_THREAD;
        // Multiples of 16 outputs keep each task's vector loops whole.
        let chunk = d_output.div_ceil(tasks).next_multiple_of(16);
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(task, out)| product(task * chunk, out));
    }
    from_flex(y)
}

fn dims(tensor: &FlexTensor) -> [usize; 2] {
    let shape = tensor.layout().shape();
    [shape[0], shape[1]]
}

/// Where an output's weights lie.
#[derive(Clone, Copy)]
enum WeightLayout {
    /// Output `o` reads `weights[o * row_stride..][..in]` (a checkpoint's `[out, in]` matrix).
    RowPerOutput { row_stride: usize },
    /// Input `i` holds the weights of every output at `weights[i * row_stride..][..out]`.
    RowPerInput { row_stride: usize },
}

/// Lanes of an accumulator: two AVX registers, independent chains for the adds.
const LANES: usize = 16;

/// `out[o] = dot(weights row first + o, x)`.
fn dot_rows(weights: &[f32], row_stride: usize, first: usize, x: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for (checked above).
        return unsafe { dot_rows_avx2(weights, row_stride, first, x, out) };
    }
    dot_rows_portable(weights, row_stride, first, x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2(
    weights: &[f32],
    row_stride: usize,
    first: usize,
    x: &[f32],
    out: &mut [f32],
) {
    dot_rows_portable(weights, row_stride, first, x, out)
}

#[inline(always)]
fn dot_rows_portable(weights: &[f32], row_stride: usize, first: usize, x: &[f32], out: &mut [f32]) {
    for (o, out) in out.iter_mut().enumerate() {
        *out = dot(&weights[(first + o) * row_stride..][..x.len()], x);
    }
}

/// `a · b` with [`LANES`] independent partial sums (inlined into its callers' vector code; the
/// attention kernel's scores use it too).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut a_chunks = a.chunks_exact(LANES);
    let mut b_chunks = b.chunks_exact(LANES);
    for (x, y) in (&mut a_chunks).zip(&mut b_chunks) {
        for ((lane, &x), &y) in lanes.iter_mut().zip(x).zip(y) {
            *lane = x.mul_add(y, *lane);
        }
    }
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    lanes.iter().sum::<f32>() + tail
}

/// `out[o] = sum_i x[i] * weights[i * row_stride + first + o]`.
fn scale_rows(weights: &[f32], row_stride: usize, first: usize, x: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for (checked above).
        return unsafe { scale_rows_avx2(weights, row_stride, first, x, out) };
    }
    scale_rows_portable(weights, row_stride, first, x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scale_rows_avx2(
    weights: &[f32],
    row_stride: usize,
    first: usize,
    x: &[f32],
    out: &mut [f32],
) {
    scale_rows_portable(weights, row_stride, first, x, out)
}

#[inline(always)]
fn scale_rows_portable(
    weights: &[f32],
    row_stride: usize,
    first: usize,
    x: &[f32],
    out: &mut [f32],
) {
    out.fill(0.0);
    let width = out.len();
    for (i, &v) in x.iter().enumerate() {
        let row = &weights[i * row_stride + first..][..width];
        for (o, &w) in out.iter_mut().zip(row) {
            *o = w.mul_add(v, *o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;
    use burn_flex::Flex;

    fn reference(x: &[f32], w: &[f32], d_input: usize, d_output: usize) -> Vec<f64> {
        (0..d_output)
            .map(|o| {
                (0..d_input)
                    .map(|i| x[i] as f64 * w[i * d_output + o] as f64)
                    .sum()
            })
            .collect()
    }

    #[test]
    fn both_weight_layouts_match_f64_on_one_and_several_threads() {
        let device = Default::default();
        // Small (one thread), odd sizes (vector tails), large (the pool).
        for (d_input, d_output) in [(8, 5), (37, 29), (576, 1536), (300, 700)] {
            let x = Tensor::<Flex, 2>::random([1, d_input], Distribution::Default, &device);
            let stored =
                Tensor::<Flex, 2>::random([d_output, d_input], Distribution::Default, &device);
            let transposed = stored.clone().transpose();
            let contiguous = Tensor::<Flex, 2>::from_data(transposed.to_data(), &device);
            let expected = reference(
                &x.to_data().to_vec::<f32>().unwrap(),
                &contiguous.to_data().to_vec::<f32>().unwrap(),
                d_input,
                d_output,
            );
            for (name, weight) in [("[out, in] view", transposed), ("[in, out]", contiguous)] {
                let y = matvec(&x, &weight).expect("flex f32 takes the fast path");
                assert_eq!(y.dims(), [1, d_output]);
                let worst = y
                    .to_data()
                    .to_vec::<f32>()
                    .unwrap()
                    .iter()
                    .zip(&expected)
                    .map(|(&a, &b)| (a as f64 - b).abs() / (1.0 + b.abs()))
                    .fold(0.0, f64::max);
                assert!(worst < 1e-5, "{name} {d_input}x{d_output}: {worst}");
            }
        }
    }

    #[test]
    fn other_shapes_and_types_take_the_generic_path() {
        let device = Default::default();
        let w = Tensor::<Flex, 2>::ones([8, 4], &device);
        let two_rows = Tensor::<Flex, 2>::ones([2, 8], &device);
        assert!(matvec(&two_rows, &w).is_none());
        let x = Tensor::<Flex, 2>::ones([1, 8], &device);
        assert!(matvec(&x.clone().cast(DType::F16), &w.clone().cast(DType::F16)).is_none());
    }
}
