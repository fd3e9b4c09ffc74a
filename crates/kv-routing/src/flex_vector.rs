//! The vector arithmetic the flex kernels share (feature `flex`): a dot product and an
//! exponential written so that the compiler vectorizes them, a prefetch hint, and the check for
//! the AVX2 and FMA instructions the kernels are compiled for.

/// Whether the CPU runs AVX2 and FMA, the features of the kernels' `#[target_feature]`
/// variants (the portable code runs otherwise).
#[inline]
pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Lanes of [`dot`]'s partial sums: two AVX registers, two independent chains of adds.
const LANES: usize = 16;

/// `a · b` with [`LANES`] independent partial sums (inlined into its callers' vector code).
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

/// Asks the CPU to start loading `values` into its cache, one request per 64-byte line (x86-64;
/// nothing elsewhere).
#[inline(always)]
pub(crate) fn prefetch(values: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in values.chunks(16) {
        // SAFETY: a prefetch is a hint: it reads nothing the program sees and cannot fault.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

/// `e^x` for `x <= 0` (a score minus its row's maximum), within 2 ulp of `f32::exp`, written
/// branch-free so that it vectorizes: range reduction to `x = n ln 2 + r` with `|r| <= ln 2 / 2`,
/// a degree-6 polynomial for `e^r` (Cephes' `expf` coefficients), and `2^n` built from exponent
/// bits. `n` is rounded by adding `1.5 * 2^23`, which leaves it in the low mantissa bits (no
/// float-to-int conversion, whose saturation keeps compilers from vectorizing). Inputs below
/// -87.3, where `e^x` leaves the normal range, give `e^-87.3` (1.2e-38): a weight no sum notices.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const ROUNDING: f32 = 12_582_912.0;
    let x = x.max(-87.3);
    let shifted = x * std::f32::consts::LOG2_E + ROUNDING;
    let n = shifted - ROUNDING;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e_r = p * r * r + r + 1.0;
    // The low bits of `shifted` are `n` (two's complement); moved into the exponent field.
    let two_n = f32::from_bits(shifted.to_bits().wrapping_add(127) << 23);
    e_r * two_n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_std() {
        let mut x = 0.0f32;
        while x > -87.0 {
            let (ours, std) = (exp(x), x.exp());
            assert!(
                (ours - std).abs() <= 2.0 * f32::EPSILON * std,
                "{x}: {ours} vs {std}"
            );
            x -= 0.001_7;
        }
        assert!(exp(-100.0) < 1.3e-38);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn dot_matches_f64_with_and_without_a_tail() {
        for len in [1, 15, 16, 17, 64, 100] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let expected: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            assert!((dot(&a, &b) as f64 - expected).abs() < 1e-5, "{len}");
        }
    }
}
