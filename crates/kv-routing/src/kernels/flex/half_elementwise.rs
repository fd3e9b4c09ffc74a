//! Element-wise arithmetic on half-precision (f16, bf16) tensors, vectorized: the residual
//! stream's sums `x + y` and the queries' scale `x * s`.
//!
//! flex computes these one element at a time through `half`'s scalar conversions: in a
//! ~1,000-token f16 prefill of SmolLM2 the blocks' two residual sums took about 5% of the time
//! and the queries' scale 1.5%, against well under 1% for the same operations in f32
//! (docs/benchmarks.md, "Half-precision prefill"). Here blocks of values are widened with the
//! element type's slice conversion (the CPU's conversion instructions where it has them),
//! combined in f32 and rounded once, over the pool, in place into `x` when its buffer is its
//! own.
//!
//! # Contract
//! [`add`] returns `x + y` for two flex tensors of the same shape and the same half type, and
//! [`scale`] returns `x * s` for a half-precision flex tensor, each operand one contiguous run
//! of values; both give their operands back untouched otherwise (broadcasting, strided views,
//! f32: flex's own operations). The results are bit for bit flex's: for the sum, the f32 sum of
//! two half values rounded once to the half type is their exact sum rounded once (f32 carries
//! more than twice the half types' significand bits plus two, so the double rounding is
//! innocuous); for the scale, `s` is first rounded to the half type, as flex does, and the
//! product of two half values is exact in f32.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use burn_flex::FlexTensor;
use half::{bf16, f16};
use rayon::prelude::*;

use super::tensor::{from_flex, into_flex_float};
use super::vector::KernelElement;

/// Values per task of the pool: enough to amortize a task; a prefill's millions of values
/// spread over every core.
const VALUES_PER_TASK: usize = 1 << 14;

/// Values widened at a time (stack buffers of 1 KiB).
const WIDENED_BLOCK: usize = 256;

/// `x + y` (see the module docs), or both operands back.
#[allow(clippy::type_complexity)]
pub(crate) fn add<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    y: Tensor<B, D>,
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    let half = matches!(x.dtype(), DType::F16 | DType::BF16);
    if !half || x.dims() != y.dims() || x.dtype() != y.dtype() {
        return Err((x, y));
    }
    let mut x_flex = match into_flex_float(x) {
        Ok(flex) => flex,
        Err(x) => return Err((x, y)),
    };
    let back = |t: FlexTensor| from_flex::<B, D>(t).expect("B is flex and the rank is D's");
    let y_flex = match into_flex_float(y) {
        Ok(flex) => flex,
        Err(y) => return Err((back(x_flex), y)),
    };
    let added = match x_flex.dtype() {
        DType::F16 => add_into::<f16>(&mut x_flex, &y_flex),
        _ => add_into::<bf16>(&mut x_flex, &y_flex),
    };
    if added {
        Ok(back(x_flex))
    } else {
        Err((back(x_flex), back(y_flex)))
    }
}

/// `x += y` over both tensors' contiguous runs, in `x`'s buffer (a copy first if it is shared);
/// `false`, with nothing written, when either is not one contiguous run.
fn add_into<E: KernelElement>(x: &mut FlexTensor, y: &FlexTensor) -> bool {
    let (Some((x_start, x_end)), Some((y_start, y_end))) = (
        x.layout().contiguous_offsets(),
        y.layout().contiguous_offsets(),
    ) else {
        return false;
    };
    if x_end - x_start != y_end - y_start {
        return false;
    }
    let y_values = &E::storage(y)[y_start..y_end];
    let x_values = &mut E::storage_mut(x)[x_start..x_end];
    x_values
        .par_chunks_mut(VALUES_PER_TASK)
        .zip(y_values.par_chunks(VALUES_PER_TASK))
        .for_each(|(x, y)| {
            let mut buffers = [[0.0f32; WIDENED_BLOCK]; 2];
            for (x, y) in x.chunks_mut(WIDENED_BLOCK).zip(y.chunks(WIDENED_BLOCK)) {
                let [xw, yw] = &mut buffers;
                let n = x.len();
                E::widen(x, &mut xw[..n]);
                E::widen(y, &mut yw[..n]);
                for (a, b) in xw[..n].iter_mut().zip(&yw[..n]) {
                    *a += b;
                }
                E::narrow(&xw[..n], x);
            }
        });
    true
}

/// `x * s` (see the module docs), or `x` back.
pub(crate) fn scale<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    s: f64,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if !matches!(x.dtype(), DType::F16 | DType::BF16) {
        return Err(x);
    }
    let mut x_flex = into_flex_float(x)?;
    let scaled = match x_flex.dtype() {
        DType::F16 => scale_into::<f16>(&mut x_flex, s),
        _ => scale_into::<bf16>(&mut x_flex, s),
    };
    let back = from_flex::<B, D>(x_flex).expect("B is flex and the rank is D's");
    if scaled {
        Ok(back)
    } else {
        Err(back)
    }
}

/// `x *= s` over the tensor's contiguous run, `s` rounded to `E` first (as flex does), in `x`'s
/// buffer (a copy first if it is shared); `false`, with nothing written, when `x` is not one
/// contiguous run.
fn scale_into<E: KernelElement>(x: &mut FlexTensor, s: f64) -> bool {
    let Some((start, end)) = x.layout().contiguous_offsets() else {
        return false;
    };
    let s = E::from_f32(s as f32).to_f32();
    E::storage_mut(x)[start..end]
        .par_chunks_mut(VALUES_PER_TASK)
        .for_each(|x| {
            let mut widened = [0.0f32; WIDENED_BLOCK];
            for x in x.chunks_mut(WIDENED_BLOCK) {
                let n = x.len();
                E::widen(x, &mut widened[..n]);
                for a in &mut widened[..n] {
                    *a *= s;
                }
                E::narrow(&widened[..n], x);
            }
        });
    true
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, TensorData};
    use burn_flex::Flex;

    use super::*;

    /// Random `[2, 3, len]` values of `dtype`, spread over several binades (so that sums
    /// round).
    fn random(len: usize, dtype: DType, seed: u64) -> Tensor<Flex, 3> {
        let device = Default::default();
        <Flex as Backend>::seed(&device, seed);
        Tensor::<Flex, 3>::random([2, 3, len], Distribution::Normal(0.0, 30.0), &device).cast(dtype)
    }

    fn bits(t: Tensor<Flex, 3>) -> Vec<f32> {
        t.cast(DType::F32).into_data().to_vec::<f32>().unwrap()
    }

    #[test]
    fn sums_equal_flex_add_bit_for_bit_in_place_or_shared() {
        for dtype in [DType::F16, DType::BF16] {
            // Lengths around the widened block and the task size, tails included.
            for len in [1, 7, 255, 257, 3000] {
                let (x, y) = (random(len, dtype, 1), random(len, dtype, 2));
                let expected = bits(x.clone() + y.clone());
                // `x` shared with `kept`: written into a copy, `kept` untouched.
                let kept = x.clone();
                let kept_before = bits(kept.clone());
                let sum =
                    add(x, y.clone()).unwrap_or_else(|_| panic!("contiguous halves are added"));
                assert_eq!(bits(sum), expected, "{dtype:?} len {len}, shared x");
                assert_eq!(
                    bits(kept.clone()),
                    kept_before,
                    "{dtype:?}: the shared x changed"
                );
                // `kept` now the only handle: written in place, the same sums.
                let sum = add(kept, y).unwrap_or_else(|_| panic!("contiguous halves are added"));
                assert_eq!(bits(sum), expected, "{dtype:?} len {len}, unique x");
            }
        }
    }

    #[test]
    fn scales_equal_flex_mul_scalar_bit_for_bit() {
        for dtype in [DType::F16, DType::BF16] {
            // 0.125 is exact in both types, the others round.
            for s in [0.125, 1.0 / 3.0, 0.1, -7.3] {
                for len in [1, 255, 3000] {
                    let x = random(len, dtype, 5);
                    let expected = bits(x.clone().mul_scalar(s));
                    let kept = x.clone();
                    let scaled = scale(x, s).unwrap_or_else(|_| panic!("a contiguous half tensor"));
                    assert_eq!(bits(scaled), expected, "{dtype:?} x {s}, len {len}");
                    let scaled =
                        scale(kept, s).unwrap_or_else(|_| panic!("a contiguous half tensor"));
                    assert_eq!(
                        bits(scaled),
                        expected,
                        "{dtype:?} x {s}, len {len}, in place"
                    );
                }
            }
        }
        // f32 and strided views are flex's.
        let x = random(4, DType::F16, 6);
        assert!(scale(x.clone().cast(DType::F32), 0.5).is_err());
        assert!(scale(x.swap_dims(0, 2), 0.5).is_err());
    }

    #[test]
    fn other_types_shapes_and_layouts_come_back_untouched() {
        let device = Default::default();
        let f32s =
            Tensor::<Flex, 3>::from_data(TensorData::new(vec![1.0f32; 6], [1, 2, 3]), &device);
        assert!(add(f32s.clone(), f32s.clone()).is_err());
        let x = random(4, DType::F16, 3);
        // Another shape (broadcasting is Burn's).
        let (back_x, back_y) = add(x.clone(), random(1, DType::F16, 4)).unwrap_err();
        assert_eq!(bits(back_x), bits(x.clone()));
        assert_eq!(back_y.dims(), [2, 3, 1]);
        // A strided view.
        let swapped = x.clone().swap_dims(0, 1);
        let (back, _) = add(swapped.clone(), swapped.clone()).unwrap_err();
        assert_eq!(bits(back), bits(swapped));
        // Mixed half types.
        assert!(add(x.clone(), x.cast(DType::BF16)).is_err());
    }
}
