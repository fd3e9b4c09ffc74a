//! The attention kernels' softmax over a row's visible prefix.
//!
//! Non-finite scores behave as in Burn's generic `softmax` (`exp(x - max) / Σ`), on every
//! backend: a NaN score, or a `+inf` one (where `inf - inf` is NaN), makes the whole row NaN. The
//! vectorized exponential clamps its argument from below, which would otherwise turn a NaN into
//! a weight of about zero and hide it.

use super::vector::{exp, has_avx2_fma_f16c};

/// Lanes of the reductions: independent accumulators the compiler keeps in one vector register.
const LANES: usize = 8;

/// Softmax over `row[..visible]` in place; `row[visible..]` (future keys) becomes 0, and so does
/// every key `j` that `valid` marks `false` (a hole: no token of this sequence), exactly as a
/// mask of `-inf` scores gives in Burn's softmax. Returns the row's log-sum-exp over the keys it
/// weighs, `ln Σ exp(score)` (NaN where the row became NaN): what the training kernel keeps to
/// recompute the weights in its backward pass.
pub(crate) fn softmax_prefix(row: &mut [f32], visible: usize, valid: Option<&[bool]>) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma_f16c() {
        // SAFETY: the CPU has the features the function is compiled for (checked above).
        return unsafe { softmax_prefix_avx2(row, visible, valid) };
    }
    softmax_prefix_portable(row, visible, valid)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn softmax_prefix_avx2(row: &mut [f32], visible: usize, valid: Option<&[bool]>) -> f32 {
    softmax_prefix_portable(row, visible, valid)
}

/// The larger of `m` and `x`, NaN if either is (`f32::max` would drop a NaN).
#[inline(always)]
fn max_keeping_nan(m: f32, x: f32) -> f32 {
    if x > m || x.is_nan() {
        x
    } else {
        m
    }
}

/// [`softmax_prefix`] without the dispatch, inlined into the callers' vector code.
#[inline(always)]
pub(crate) fn softmax_prefix_portable(
    row: &mut [f32],
    visible: usize,
    valid: Option<&[bool]>,
) -> f32 {
    let (live, future) = row.split_at_mut(visible);
    future.fill(0.0);
    let Some(valid) = valid else {
        return softmax_live(live);
    };
    // Holes out of the maximum and the sum (`-inf`), then exactly 0 (the vectorized exponential
    // would leave about 1e-38 for them).
    for (score, &valid) in live.iter_mut().zip(valid) {
        if !valid {
            *score = f32::NEG_INFINITY;
        }
    }
    let log_sum_exp = softmax_live(live);
    if live.iter().any(|x| !x.is_nan()) {
        for (weight, &valid) in live.iter_mut().zip(valid) {
            if !valid {
                *weight = 0.0;
            }
        }
    }
    log_sum_exp
}

/// The largest value of `row` in [`LANES`] independent lanes, NaN if any is (`-inf` for an
/// empty row); inlined into the callers' vector code (the vocabulary losses use it too).
#[inline(always)]
pub(super) fn max_keeping_nan_of(row: &[f32]) -> f32 {
    let mut maxima = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &x) in maxima.iter_mut().zip(chunk) {
            *m = max_keeping_nan(*m, x);
        }
    }
    chunks
        .remainder()
        .iter()
        .chain(&maxima)
        .fold(f32::NEG_INFINITY, |m, &x| max_keeping_nan(m, x))
}

/// Softmax over the whole of `live` in place; returns its log-sum-exp.
#[inline(always)]
fn softmax_live(live: &mut [f32]) -> f32 {
    let max = max_keeping_nan_of(live);
    if !max.is_finite() {
        // NaN or +inf somewhere (or every score -inf): Burn's softmax gives NaN for the row.
        live.fill(f32::NAN);
        return f32::NAN;
    }
    let mut sums = [0.0f32; LANES];
    let mut chunks = live.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (s, x) in sums.iter_mut().zip(chunk) {
            *x = exp(*x - max);
            *s += *x;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        sum += *x;
    }
    let inverse = 1.0 / sum;
    for x in live.iter_mut() {
        *x *= inverse;
    }
    max + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_weigh_exactly_zero_and_a_row_of_holes_is_nan() {
        let mut row = vec![1.0f32, 5.0, 1.0, 9.0, 2.0];
        softmax_prefix(&mut row, 4, Some(&[true, false, true, true, false]));
        assert_eq!(row[1], 0.0);
        assert_eq!(row[4], 0.0);
        let expected = [1.0f64.exp(), 1.0f64.exp(), 9.0f64.exp()];
        let total: f64 = expected.iter().sum();
        for (&got, want) in [row[0], row[2], row[3]].iter().zip(expected) {
            assert!((got as f64 - want / total).abs() < 1e-6, "{row:?}");
        }
        // Every visible key a hole: NaN, as Burn's softmax of an all -inf row.
        let mut row = vec![1.0f32, 2.0];
        softmax_prefix(&mut row, 2, Some(&[false, false]));
        assert!(row.iter().all(|x| x.is_nan()));
    }

    #[test]
    fn finite_rows_sum_to_one_and_hide_the_future() {
        let mut row: Vec<f32> = (0..21).map(|i| (i as f32 * 0.7).sin() * 3.0).collect();
        softmax_prefix(&mut row, 17, None);
        let sum: f32 = row[..17].iter().sum();
        assert!((sum - 1.0).abs() < 1e-6, "{sum}");
        assert!(row[17..].iter().all(|&x| x == 0.0));
    }

    #[test]
    fn a_nan_or_infinite_score_makes_the_row_nan_as_burns_softmax_does() {
        // A NaN in the vector part and in the tail, +inf, and every score -inf.
        for poison in [(3, f32::NAN), (18, f32::NAN), (5, f32::INFINITY)] {
            let mut row = vec![0.5f32; 20];
            row[poison.0] = poison.1;
            softmax_prefix(&mut row, 19, None);
            assert!(row[..19].iter().all(|x| x.is_nan()), "{poison:?}: {row:?}");
            assert_eq!(row[19], 0.0);
        }
        let mut row = vec![f32::NEG_INFINITY; 4];
        softmax_prefix(&mut row, 4, None);
        assert!(row.iter().all(|x| x.is_nan()));
        // A -inf among finite scores is an ordinary weight of (about) zero: the vectorized
        // exponential stops at exp(-87.3), 1e-38.
        let mut row = vec![0.0, f32::NEG_INFINITY, 0.0];
        softmax_prefix(&mut row, 3, None);
        assert!(
            row[1] < 1e-37 && (row[0] - 0.5).abs() < 1e-7 && row[0] == row[2],
            "{row:?}"
        );
    }
}
