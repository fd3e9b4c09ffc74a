//! Products `x W` of one or a few rows on burn-flex's f32, f16 or bf16 tensors, spread over
//! rayon's pool .
//!
//! A batch-1 decode step multiplies one row by every weight of the model: it is a stream of the
//! weights from memory, and its speed is the bandwidth the stream gets. flex hands these
//! products to gemm, whose matrix-vector path runs on one thread below flex's 192³-operation
//! threshold (every projection of a small model), and one thread reads 32 GB/s here where two
//! read 43 (`bandwidth_probe`; docs/benchmarks.md). This kernel splits the outputs over the
//! pool's threads so that every core streams its share of the weight. A batched decode step (a
//! few rows) is the same stream: each weight row is read once and multiplied with every input
//! row while it sits in the core's cache, with no packing. With several rows there is enough
//! arithmetic per weight row that the CPU stops running ahead of it by itself, so the kernels ask
//! for the rows [`PREFETCH_ROWS`] ahead explicitly.
//!
//! # Contract
//! [`matvec`] computes `y = x W` for `x` `[rows, in]` and `W` `[in, out]` of one element type
//! (f32, f16 or bf16), with `W` either the transposed view of a checkpoint's `[out, in]` matrix
//! (each output a dot product with a contiguous row; 1 to [`MAX_STREAMED_ROWS`] rows in f32,
//! [`MAX_STREAMED_HALF_ROWS`] in half precision) or, in f32,
//! contiguous `[in, out]` (each input row scaled into the outputs; one row). Half-precision
//! weights are widened in registers and summed in f32, each output rounded once. It returns
//! `None`, leaving the product to the backend's matmul, for any other backend, element type,
//! layout or row count, and for half precision on CPUs without AVX2/FMA/F16C. The sums are in
//! another order than gemm's: results agree to f32 rounding, not bit for bit.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use half::{bf16, f16};

use super::tensor::{flex_float, from_flex};
#[cfg(target_arch = "x86_64")]
use super::vector::widening_dot;
use super::vector::{dot, has_avx2_fma_f16c, prefetch, KernelElement};

/// Weights smaller than this (values) are multiplied on the calling thread: below it, handing
/// the halves to the pool costs more than the second core's bandwidth saves.
pub(crate) const PARALLEL_VALUES: usize = 1 << 16;

/// The most f32 rows multiplied here; more rows are a matrix product, gemm's work.
pub(crate) const MAX_STREAMED_ROWS: usize = 8;

/// The most half-precision rows multiplied here. Past it the weight is widened to f32 and
/// multiplied by gemm ([`super::half_product`]), which costs a pass over the weight per product:
/// for a decode step of 9-48 rows (a served batch) that pass costs more than streaming the half
/// weight through this kernel. Measured with SmolLM2 in f16 (docs/benchmarks.md, "Serving under
/// a KV budget"): a 15-row decode step 2.3-2.8x faster streamed, prompts of 32 and 48 tokens
/// 1.3-1.7x faster, 64 tokens even, 128 tokens 1.3x slower.
pub(crate) const MAX_STREAMED_HALF_ROWS: usize = 48;

/// The most rows of `dtype` that [`matvec`] multiplies.
pub(crate) fn max_streamed_rows(dtype: DType) -> usize {
    match dtype {
        DType::F32 => MAX_STREAMED_ROWS,
        _ => MAX_STREAMED_HALF_ROWS,
    }
}

/// Outputs per task: enough tasks for the pool to balance, each streaming at least tens of
/// kilobytes of weight.
pub(crate) const TASKS_PER_THREAD: usize = 4;

/// `x W` for `x` `[rows, in]` and `W` `[in, out]` flex tensors of one element type (f32, or
/// f16 where the CPU converts it: [`has_avx2_fma_f16c`]); `None` otherwise (see the module
/// docs).
pub(crate) fn matvec<B: Backend>(x: &Tensor<B, 2>, weight: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    let x = flex_float(x)?;
    let weight = flex_float(weight)?;
    let y = match (x.dtype(), weight.dtype()) {
        (DType::F32, DType::F32) => multiply_rows::<f32>(&x, &weight),
        (DType::F16, DType::F16) if has_avx2_fma_f16c() => multiply_rows::<f16>(&x, &weight),
        (DType::BF16, DType::BF16) if has_avx2_fma_f16c() => multiply_rows::<bf16>(&x, &weight),
        _ => None,
    };
    from_flex(y?)
}

fn multiply_rows<E: KernelElement>(x: &FlexTensor, weight: &FlexTensor) -> Option<FlexTensor> {
    let [rows, d_input] = dims(x);
    let [weight_input, d_output] = dims(weight);
    if !(1..=max_streamed_rows(E::DTYPE)).contains(&rows)
        || weight_input != d_input
        || d_input == 0
        || d_output == 0
    {
        return None;
    }
    let (x_start, x_end) = x.layout().contiguous_offsets()?;
    // The input rows in f32 (a copy of at most a few kilobytes for f16 inputs).
    let mut widened = Vec::new();
    let x_values = E::in_f32(&E::storage(x)[x_start..x_end], &mut widened);
    let layout = weight.layout();
    let (start, strides) = (layout.start_offset(), layout.strides());
    let (input_stride, output_stride) = (strides[0], strides[1]);
    if input_stride == 1 && output_stride >= d_input as isize {
        let weights = &E::storage(weight)[start..];
        let row_stride = output_stride as usize;
        return Some(if rows == 1 {
            one_row::<E>(weights, row_stride, x_values, d_output)
        } else {
            few_rows::<E>(weights, row_stride, x_values, rows, d_output)
        });
    }
    // A contiguous `[in, out]` weight (a model initialized here): one f32 row.
    if E::DTYPE == DType::F32
        && rows == 1
        && output_stride == 1
        && input_stride >= d_output as isize
    {
        let weights = &weight.storage::<f32>()[start..];
        let mut y = super::tensor::zeroed(Shape::from(vec![1, d_output]), DType::F32);
        let row_stride = input_stride as usize;
        split_outputs(y.storage_mut::<f32>(), d_input, |first, out| {
            scaled_rows(weights, row_stride, first, x_values, out)
        });
        return Some(y);
    }
    None
}

/// `out` (all outputs, `d_input` weights each) computed by `product(first output, outputs)`:
/// on the calling thread for small weights, else in chunks over the pool.
fn split_outputs<T: Send>(out: &mut [T], d_input: usize, product: impl Fn(usize, &mut [T]) + Sync) {
    if d_input * out.len() < PARALLEL_VALUES {
        product(0, out);
    } else {
        let tasks = rayon::current_num_threads() * TASKS_PER_THREAD;
        // Multiples of 16 outputs keep each task's vector loops whole.
        let chunk = out.len().div_ceil(tasks).next_multiple_of(16);
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(task, out)| product(task * chunk, out));
    }
}

/// `x W` for one input row and a checkpoint-layout weight (`[out, in]` rows, `row_stride`
/// apart): one dot product per output, the outputs split over the pool.
fn one_row<E: KernelElement>(
    weights: &[E],
    row_stride: usize,
    x: &[f32],
    d_output: usize,
) -> FlexTensor {
    let mut y = super::tensor::zeroed(Shape::from(vec![1, d_output]), E::DTYPE);
    split_outputs(E::storage_mut(&mut y), x.len(), |first, out| {
        dot_rows(weights, row_stride, first, x, out)
    });
    y
}

/// The two dimensions of a rank-2 flex tensor.
pub(crate) fn dims(tensor: &FlexTensor) -> [usize; 2] {
    let shape = tensor.layout().shape();
    [shape[0], shape[1]]
}

/// `out[o] = weight row (first + o) · x`, each row streamed once and the rows
/// [`PREFETCH_ROWS`] ahead requested.
fn dot_rows<E: KernelElement>(
    weights: &[E],
    row_stride: usize,
    first: usize,
    x: &[f32],
    out: &mut [E],
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma_f16c() {
        // SAFETY: the CPU has the features the function is compiled for (checked above).
        return unsafe { dot_rows_avx2(weights, row_stride, first, x, out) };
    }
    dot_rows_portable(weights, row_stride, first, x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows_avx2<E: KernelElement>(
    weights: &[E],
    row_stride: usize,
    first: usize,
    x: &[f32],
    out: &mut [E],
) {
    if E::DTYPE == DType::F32 {
        // f32 rows: the compiler's vectorization of `dot`, compiled here for AVX2.
        return dot_rows_portable(weights, row_stride, first, x, out);
    }
    for (o, out) in out.iter_mut().enumerate() {
        let row = (first + o) * row_stride;
        prefetch_row(weights, row + PREFETCH_ROWS * row_stride, x.len());
        // SAFETY: the CPU has the features (this function's contract).
        *out = E::from_f32(unsafe { widening_dot(&weights[row..][..x.len()], x) });
    }
}

#[inline(always)]
fn dot_rows_portable<E: KernelElement>(
    weights: &[E],
    row_stride: usize,
    first: usize,
    x: &[f32],
    out: &mut [E],
) {
    for (o, out) in out.iter_mut().enumerate() {
        let row = (first + o) * row_stride;
        prefetch_row(weights, row + PREFETCH_ROWS * row_stride, x.len());
        *out = E::from_f32(dot(&weights[row..][..x.len()], x));
    }
}

/// Requests the `len` weights from `start` on, or those of them inside the storage.
#[inline(always)]
fn prefetch_row<E>(weights: &[E], start: usize, len: usize) {
    if let Some(ahead) = weights.get(start..) {
        prefetch(&ahead[..len.min(ahead.len())]);
    }
}

/// `out` from output `first` on, for one input row `x` and a contiguous `[in, out]` weight
/// whose input `i` holds the weights of every output at `weights[i * row_stride..]`: the
/// input's values scaled into the outputs.
fn scaled_rows(weights: &[f32], row_stride: usize, first: usize, x: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma_f16c() {
        // SAFETY: the CPU has the features the function is compiled for (checked above).
        return unsafe { scaled_rows_avx2(weights, row_stride, first, x, out) };
    }
    scaled_rows_portable(weights, row_stride, first, x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scaled_rows_avx2(
    weights: &[f32],
    row_stride: usize,
    first: usize,
    x: &[f32],
    out: &mut [f32],
) {
    scaled_rows_portable(weights, row_stride, first, x, out)
}

#[inline(always)]
fn scaled_rows_portable(
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

/// How many weight rows ahead of the one being multiplied the kernels ask the CPU to load: a
/// row's dot products are too short for the hardware prefetcher to run far enough ahead by
/// itself (measured: batch-8 decode of SmolLM2 1.37x faster with it).
const PREFETCH_ROWS: usize = 2;

/// `x W` for 2 to [`max_streamed_rows`] rows of `x` and a checkpoint-layout weight: every weight
/// row is read once, from memory, and multiplied with all input rows while it is in the core's
/// cache.
fn few_rows<E: KernelElement>(
    weights: &[E],
    row_stride: usize,
    x: &[f32],
    rows: usize,
    d_output: usize,
) -> FlexTensor {
    // Outputs by rows (`[out, rows]`): a task's outputs are one contiguous chunk for every row.
    let mut by_output = vec![0.0f32; d_output * rows];
    let tasks = rayon::current_num_threads() * TASKS_PER_THREAD;
    let chunk = d_output.div_ceil(tasks).next_multiple_of(16);
    by_output
        .par_chunks_mut(chunk * rows)
        .enumerate()
        .for_each(|(task, out)| dot_rows_few(weights, row_stride, task * chunk, x, rows, out));
    let mut y = super::tensor::zeroed(Shape::from(vec![rows, d_output]), E::DTYPE);
    let out = E::storage_mut(&mut y);
    for (o, values) in by_output.chunks_exact(rows).enumerate() {
        for (r, &value) in values.iter().enumerate() {
            out[r * d_output + o] = E::from_f32(value);
        }
    }
    y
}

/// Input rows multiplied together with a pair of weight rows: 2 x 4 accumulators and the
/// loaded values fit the 16 AVX registers.
const ROWS_PER_PASS: usize = 4;

/// `out[o * rows + r] = dot(weights row first + o, x row r)` for the outputs of `out`.
fn dot_rows_few<E: KernelElement>(
    weights: &[E],
    row_stride: usize,
    first: usize,
    x: &[f32],
    rows: usize,
    out: &mut [f32],
) {
    let d_input = x.len() / rows;
    let outputs = out.len() / rows;
    assert!(
        (first + outputs - 1) * row_stride + d_input <= weights.len(),
        "weight rows out of the storage"
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma_f16c() {
        // SAFETY: the CPU has the features the function is compiled for (checked above), and
        // every row it reads lies inside `weights` (asserted above) and `x`.
        return unsafe { dot_rows_few_avx2(weights, row_stride, first, x, rows, out) };
    }
    for (o, out) in out.chunks_exact_mut(rows).enumerate() {
        let weight = &weights[(first + o) * row_stride..][..d_input];
        for (r, out) in out.iter_mut().enumerate() {
            *out = dot(weight, &x[r * d_input..][..d_input]);
        }
    }
}

/// Weight rows two at a time (the second output's row is the first's when the count is odd),
/// input rows [`ROWS_PER_PASS`] at a time while the pair sits in the core's first-level cache.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows_few_avx2<E: KernelElement>(
    weights: &[E],
    row_stride: usize,
    first: usize,
    x: &[f32],
    rows: usize,
    out: &mut [f32],
) {
    let d_input = x.len() / rows;
    let outputs = out.len() / rows;
    for o in (0..outputs).step_by(2) {
        let pair = (o + 1).min(outputs - 1);
        // The next pair's rows (see `PREFETCH_ROWS`).
        if let Some(ahead) = weights.get((first + o + PREFETCH_ROWS) * row_stride..) {
            prefetch(&ahead[..(PREFETCH_ROWS * row_stride).min(ahead.len())]);
        }
        let w0 = weights[(first + o) * row_stride..][..d_input].as_ptr();
        let w1 = weights[(first + pair) * row_stride..][..d_input].as_ptr();
        let mut r = 0;
        while r < rows {
            let count = (rows - r).min(ROWS_PER_PASS);
            let x = x[r * d_input..][..count * d_input].as_ptr();
            let mut dots = [[0.0f32; ROWS_PER_PASS]; 2];
            // SAFETY: `w0` and `w1` point at `d_input` values, `x` at `count` rows of them
            // (the slices above).
            unsafe {
                match count {
                    1 => pair_dots::<E, 1>(w0, w1, x, d_input, &mut dots),
                    2 => pair_dots::<E, 2>(w0, w1, x, d_input, &mut dots),
                    3 => pair_dots::<E, 3>(w0, w1, x, d_input, &mut dots),
                    _ => pair_dots::<E, ROWS_PER_PASS>(w0, w1, x, d_input, &mut dots),
                }
            }
            out[o * rows + r..][..count].copy_from_slice(&dots[0][..count]);
            out[pair * rows + r..][..count].copy_from_slice(&dots[1][..count]);
            r += count;
        }
    }
}

/// The `R` dot products of each of the weight rows at `w0` and `w1` with the `R` input rows at
/// `x` (all of `width` values), into `dots[0][..R]` and `dots[1][..R]`.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `w0` and `w1` point at `width` readable values, `x` at
/// `R * width`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn pair_dots<E: KernelElement, const R: usize>(
    w0: *const E,
    w1: *const E,
    x: *const f32,
    width: usize,
    dots: &mut [[f32; ROWS_PER_PASS]; 2],
) {
    use std::arch::x86_64::*;
    const VECTOR: usize = 8;
    let whole = width - width % VECTOR;
    let mut sums0 = [_mm256_setzero_ps(); R];
    let mut sums1 = [_mm256_setzero_ps(); R];
    let mut c = 0;
    while c < whole {
        // SAFETY: `c + VECTOR <= width`: inside every row (the function's contract).
        unsafe {
            let a = E::load8(w0.add(c));
            let b = E::load8(w1.add(c));
            for r in 0..R {
                let v = _mm256_loadu_ps(x.add(r * width + c));
                sums0[r] = _mm256_fmadd_ps(a, v, sums0[r]);
                sums1[r] = _mm256_fmadd_ps(b, v, sums1[r]);
            }
        }
        c += VECTOR;
    }
    for r in 0..R {
        let mut lanes = [[0.0f32; VECTOR]; 2];
        // SAFETY: `lanes` holds 8 values each; the tails read `whole..width` of each row.
        unsafe {
            _mm256_storeu_ps(lanes[0].as_mut_ptr(), sums0[r]);
            _mm256_storeu_ps(lanes[1].as_mut_ptr(), sums1[r]);
            for i in whole..width {
                let v = *x.add(r * width + i);
                lanes[0][0] += (*w0.add(i)).to_f32() * v;
                lanes[1][0] += (*w1.add(i)).to_f32() * v;
            }
        }
        dots[0][r] = lanes[0].iter().sum();
        dots[1][r] = lanes[1].iter().sum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;
    use burn_flex::Flex;

    use crate::kernels::flex::tensor::{f32_values, product_reference as reference};

    #[test]
    fn both_weight_layouts_match_f64_on_one_and_several_threads() {
        let device = Default::default();
        // One row: small (one thread), odd sizes (vector tails), large (the pool). A few rows:
        // every row count of a pass and more than one pass, an unpaired last output.
        for (rows, d_input, d_output) in [
            (1, 8, 5),
            (1, 37, 29),
            (1, 576, 1536),
            (1, 300, 700),
            (2, 37, 29),
            (3, 576, 1536),
            (5, 300, 701),
            (8, 64, 2048),
        ] {
            let x = Tensor::<Flex, 2>::random([rows, d_input], Distribution::Default, &device);
            let stored =
                Tensor::<Flex, 2>::random([d_output, d_input], Distribution::Default, &device);
            let transposed = stored.clone().transpose();
            let contiguous = Tensor::<Flex, 2>::from_data(transposed.to_data(), &device);
            let expected = reference(
                &f32_values(&x),
                &f32_values(&contiguous),
                rows,
                d_input,
                d_output,
            );
            for (name, weight) in [("[out, in] view", transposed), ("[in, out]", contiguous)] {
                let Some(y) = matvec(&x, &weight) else {
                    // A contiguous `[in, out]` weight is multiplied here for one row only.
                    assert!(rows > 1 && name == "[in, out]", "{name}, {rows} rows");
                    continue;
                };
                assert_eq!(y.dims(), [rows, d_output]);
                let worst = f32_values(&y)
                    .iter()
                    .zip(&expected)
                    .map(|(&a, &b)| (a as f64 - b).abs() / (1.0 + b.abs()))
                    .fold(0.0, f64::max);
                assert!(worst < 1e-5, "{name} {rows}x{d_input}x{d_output}: {worst}");
            }
        }
    }

    #[test]
    fn half_precision_weights_match_f64_of_their_values() {
        if !has_avx2_fma_f16c() {
            return; // Half precision is left to flex's matmul on such CPUs.
        }
        let device = Default::default();
        // One rounding of each f32 sum: within 2^-11 (f16) or 2^-8 (bf16) of the result.
        for (dtype, tolerance) in [(DType::F16, 1e-3), (DType::BF16, 8e-3)] {
            for (rows, d_input, d_output) in [
                (1, 37, 29),
                (1, 576, 1536),
                (3, 576, 1536),
                (8, 64, 2048),
                (15, 576, 192),
                (48, 37, 29),
            ] {
                let half = |dims: [usize; 2]| {
                    Tensor::<Flex, 2>::random(dims, Distribution::Default, &device).cast(dtype)
                };
                let x = half([rows, d_input]);
                // The checkpoint layout: `[out, in]` stored, multiplied through its transposed
                // view.
                let weight = half([d_output, d_input]).transpose();
                let expected = reference(
                    &f32_values(&x),
                    &f32_values(&weight),
                    rows,
                    d_input,
                    d_output,
                );
                let y = matvec(&x, &weight).expect("half precision takes the kernel");
                assert_eq!((y.dims(), y.dtype()), ([rows, d_output], dtype));
                let worst = f32_values(&y)
                    .iter()
                    .zip(&expected)
                    .map(|(&a, &b)| (a as f64 - b).abs() / (1.0 + b.abs()))
                    .fold(0.0, f64::max);
                assert!(
                    worst < tolerance,
                    "{dtype:?} {rows}x{d_input}x{d_output}: {worst}"
                );
            }
        }
    }

    #[test]
    fn other_shapes_and_types_take_the_generic_path() {
        let device = Default::default();
        let w = Tensor::<Flex, 2>::ones([8, 4], &device);
        let many_rows = Tensor::<Flex, 2>::ones([MAX_STREAMED_ROWS + 1, 8], &device);
        assert!(matvec(&many_rows, &w).is_none());
        // Half precision streams up to its own count of rows (a served batch), in the checkpoint
        // layout.
        let half_w = Tensor::<Flex, 2>::ones([4, 8], &device)
            .cast(DType::F16)
            .transpose();
        let half_rows = |rows| Tensor::<Flex, 2>::ones([rows, 8], &device).cast(DType::F16);
        assert!(matvec(&half_rows(MAX_STREAMED_HALF_ROWS + 1), &half_w).is_none());
        if has_avx2_fma_f16c() {
            assert!(matvec(&half_rows(MAX_STREAMED_HALF_ROWS), &half_w).is_some());
        }
        let x = Tensor::<Flex, 2>::ones([1, 8], &device);
        // Mixed element types, and f16 weights in the `[in, out]` layout of a model built here.
        assert!(matvec(&x.clone().cast(DType::F16), &w.clone()).is_none());
        assert!(matvec(&x.clone().cast(DType::F16), &w.clone().cast(DType::F16)).is_none());
    }
}
