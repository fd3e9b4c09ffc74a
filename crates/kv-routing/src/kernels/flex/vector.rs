//! The vector arithmetic the flex kernels share: a dot product and an
//! exponential written so that the compiler vectorizes them, a prefetch hint, the element types
//! the kernels read (f32, f16 and bf16, widened to f32 in registers), and the check for the
//! instructions the kernels are compiled for.

use burn::tensor::DType;
use burn_flex::FlexTensor;
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// Setting this environment variable to `portable` makes the kernels run their portable code
/// on any CPU, as on one without AVX2/FMA/F16C: the tests run every kernel test through both
/// paths this way (`kernels_pass_on_the_portable_path`), and a user can rule the vector code out
/// when chasing a numerical difference. Read once per process.
pub(crate) const PORTABLE_KERNELS_VARIABLE: &str = "KV_ROUTING_KERNELS";

/// Whether the CPU runs AVX2, FMA and F16C, the features of the kernels' `#[target_feature]`
/// variants (the portable code runs otherwise, and where [`PORTABLE_KERNELS_VARIABLE`] says
/// so). Every x86-64 CPU with AVX2 has the other two.
#[inline]
pub(crate) fn has_avx2_fma_f16c() -> bool {
    static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DETECTED.get_or_init(|| {
        let forced_portable =
            std::env::var(PORTABLE_KERNELS_VARIABLE).is_ok_and(|value| value == "portable");
        #[cfg(target_arch = "x86_64")]
        return !forced_portable
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c");
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = forced_portable;
            false
        }
    })
}

/// Whether the CPU also has AVX-512F and AVX-512VL, for which some hot loops are compiled a
/// second time: the same 256-bit instructions, with 32 vector registers instead of 16 (fewer
/// values kept on the stack). `KV_ROUTING_KERNELS=avx2` switches it off (as the tests do, to
/// check the 16-register code on such a CPU), `=portable` with the rest.
#[inline]
pub(crate) fn has_avx512_registers() -> bool {
    static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DETECTED.get_or_init(|| {
        let forced_avx2 = std::env::var(PORTABLE_KERNELS_VARIABLE).is_ok_and(|v| v == "avx2");
        #[cfg(target_arch = "x86_64")]
        return has_avx2_fma_f16c()
            && !forced_avx2
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl");
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = forced_avx2;
            false
        }
    })
}

/// An element type a flex tensor stores and the kernels read in place: the float types of
/// [`KernelElement`], and the int8 codes of a quantized KV cache.
pub(crate) trait StoredElement: Copy + Send + Sync + 'static {
    /// The flex tensor element type that stores `Self`.
    const DTYPE: DType;

    /// `tensor`'s whole storage, when it holds `Self` (flex asserts it does).
    fn storage(tensor: &FlexTensor) -> &[Self];

    /// `tensor`'s whole storage, writable, when its buffer is uniquely owned; `None` when it is
    /// shared (writing would need a copy).
    fn unique_storage_mut(tensor: &mut FlexTensor) -> Option<&mut [Self]>;
}

impl StoredElement for i8 {
    const DTYPE: DType = DType::I8;

    fn storage(tensor: &FlexTensor) -> &[Self] {
        tensor.storage::<Self>()
    }

    fn unique_storage_mut(tensor: &mut FlexTensor) -> Option<&mut [Self]> {
        tensor.try_storage_mut::<Self>()
    }
}

/// An element type the kernels read weights and cache rows in. Arithmetic is f32 whatever the
/// storage: f16 and bf16 values are widened as they are loaded (F16C for f16, a shift for bf16)
/// and results rounded once, when stored, so a half-precision model streams half the bytes with
/// f32 sums.
pub(crate) trait KernelElement: StoredElement {
    fn to_f32(self) -> f32;

    fn from_f32(value: f32) -> Self;

    /// `dst = src` widened to f32 (equal lengths).
    fn widen(src: &[Self], dst: &mut [f32]);

    /// `dst = src` rounded to `Self` (equal lengths).
    fn narrow(src: &[f32], dst: &mut [Self]);

    /// `tensor`'s whole storage, writable (a copy first if the buffer is shared).
    fn storage_mut(tensor: &mut FlexTensor) -> &mut [Self];

    /// `values` as f32 values, when `Self` is f32.
    fn as_f32(values: &[Self]) -> Option<&[f32]>;

    /// `values` as f32 values, writable, when `Self` is f32.
    fn as_f32_mut(values: &mut [Self]) -> Option<&mut [f32]>;

    /// `values` in f32: themselves when they are f32, else widened into `buffer`.
    fn in_f32<'a>(values: &'a [Self], buffer: &'a mut Vec<f32>) -> &'a [f32] {
        match Self::as_f32(values) {
            Some(values) => values,
            None => {
                buffer.resize(values.len(), 0.0);
                Self::widen(values, buffer);
                buffer
            }
        }
    }

    /// Eight values from `values` widened to f32.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `values` addresses eight readable values.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(values: *const Self) -> std::arch::x86_64::__m256;
}

impl StoredElement for f32 {
    const DTYPE: DType = DType::F32;

    fn storage(tensor: &FlexTensor) -> &[Self] {
        tensor.storage::<Self>()
    }

    fn unique_storage_mut(tensor: &mut FlexTensor) -> Option<&mut [Self]> {
        tensor.try_storage_mut::<Self>()
    }
}

impl KernelElement for f32 {
    fn as_f32(values: &[Self]) -> Option<&[f32]> {
        Some(values)
    }

    fn as_f32_mut(values: &mut [Self]) -> Option<&mut [f32]> {
        Some(values)
    }

    fn widen(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }

    fn narrow(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }

    fn storage_mut(tensor: &mut FlexTensor) -> &mut [Self] {
        tensor.storage_mut::<Self>()
    }

    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    #[inline(always)]
    fn from_f32(value: f32) -> Self {
        value
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(values: *const Self) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller's contract.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(values) }
    }
}

/// The methods `half`'s two types implement alike: slice conversions (given), the flex storage
/// and the value conversions. Only `load8` differs.
macro_rules! half_precision_element {
    ($half:ty, $widen:path, $narrow:path) => {
        fn widen(src: &[Self], dst: &mut [f32]) {
            $widen(src, dst);
        }

        fn narrow(src: &[f32], dst: &mut [Self]) {
            $narrow(src, dst);
        }

        fn storage_mut(tensor: &mut FlexTensor) -> &mut [Self] {
            tensor.storage_mut::<Self>()
        }

        fn as_f32(_: &[Self]) -> Option<&[f32]> {
            None
        }

        fn as_f32_mut(_: &mut [Self]) -> Option<&mut [f32]> {
            None
        }

        #[inline(always)]
        fn to_f32(self) -> f32 {
            <$half>::to_f32(self)
        }

        #[inline(always)]
        fn from_f32(value: f32) -> Self {
            <$half>::from_f32(value)
        }
    };
}

/// f16 values widened to f32, eight at a time with the CPU's conversion instruction in an
/// inlined loop where it has F16C (`half`'s slice conversion calls a function per eight values,
/// plus its checks: about a tenth of a half-precision prefill went to conversions), `half`'s
/// conversion elsewhere. The same values bit for bit: `half` converts with the same instruction
/// where the CPU has it.
fn widen_f16(src: &[f16], dst: &mut [f32]) {
    assert_eq!(
        src.len(),
        dst.len(),
        "widening into a slice of another length"
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma_f16c() {
        // SAFETY: the CPU has the features (checked above).
        return unsafe { widen_avx2(src, dst) };
    }
    src.convert_to_f32_slice(dst);
}

/// f32 values rounded to f16 (to nearest, ties to even), as [`widen_f16`]: the CPU's
/// instruction in an inlined loop where it has F16C, `half`'s conversion elsewhere.
fn narrow_f16(src: &[f32], dst: &mut [f16]) {
    assert_eq!(
        src.len(),
        dst.len(),
        "narrowing into a slice of another length"
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma_f16c() {
        // SAFETY: the CPU has the features (checked above).
        return unsafe { narrow_f16_avx2(src, dst) };
    }
    dst.convert_from_f32_slice(src);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn narrow_f16_avx2(src: &[f32], dst: &mut [f16]) {
    use std::arch::x86_64::*;
    let whole = src.len() - src.len() % 8;
    for c in (0..whole).step_by(8) {
        // SAFETY: `c + 8 <= whole <= len` for both slices (equal lengths, checked by the caller).
        unsafe {
            let values = _mm256_loadu_ps(src.as_ptr().add(c));
            let halves = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(values);
            _mm_storeu_si128(dst.as_mut_ptr().add(c).cast(), halves);
        }
    }
    dst[whole..].convert_from_f32_slice(&src[whole..]);
}

fn widen_bf16(src: &[bf16], dst: &mut [f32]) {
    src.convert_to_f32_slice(dst);
}

fn narrow_bf16(src: &[f32], dst: &mut [bf16]) {
    dst.convert_from_f32_slice(src);
}

impl StoredElement for f16 {
    const DTYPE: DType = DType::F16;

    fn storage(tensor: &FlexTensor) -> &[Self] {
        tensor.storage::<Self>()
    }

    fn unique_storage_mut(tensor: &mut FlexTensor) -> Option<&mut [Self]> {
        tensor.try_storage_mut::<Self>()
    }
}

impl KernelElement for f16 {
    half_precision_element!(f16, widen_f16, narrow_f16);

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(values: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::{_mm256_cvtph_ps, _mm_loadu_si128};
        // SAFETY: the caller's contract: eight f16 values are 16 readable bytes.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(values.cast())) }
    }
}

impl StoredElement for bf16 {
    const DTYPE: DType = DType::BF16;

    fn storage(tensor: &FlexTensor) -> &[Self] {
        tensor.storage::<Self>()
    }

    fn unique_storage_mut(tensor: &mut FlexTensor) -> Option<&mut [Self]> {
        tensor.try_storage_mut::<Self>()
    }
}

impl KernelElement for bf16 {
    half_precision_element!(bf16, widen_bf16, narrow_bf16);

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(values: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // A bfloat16 is the high half of an f32: zero-extended to 32 bits and shifted up.
        // SAFETY: the caller's contract: eight bf16 values are 16 readable bytes.
        unsafe {
            let bits = _mm256_cvtepu16_epi32(_mm_loadu_si128(values.cast()));
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(bits))
        }
    }
}

/// Lanes of [`dot`]'s partial sums: two AVX registers, two independent chains of adds.
const LANES: usize = 16;

/// `a · b` with [`LANES`] independent partial sums, `a`'s elements widened to f32 (inlined into
/// its callers' vector code; for f32 the widening is nothing).
#[inline(always)]
pub(crate) fn dot<E: KernelElement>(a: &[E], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut a_chunks = a.chunks_exact(LANES);
    let mut b_chunks = b.chunks_exact(LANES);
    for (x, y) in (&mut a_chunks).zip(&mut b_chunks) {
        for ((lane, &x), &y) in lanes.iter_mut().zip(x).zip(y) {
            *lane = x.to_f32().mul_add(y, *lane);
        }
    }
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x.to_f32() * y)
        .sum();
    lanes.iter().sum::<f32>() + tail
}

/// `dst = src` widened to f32, eight values at a time in registers: [`KernelElement::widen`]
/// inlined into vector code (`half`'s slice conversion calls a function per eight values).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn widen_avx2<E: KernelElement>(src: &[E], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    assert_eq!(
        src.len(),
        dst.len(),
        "widening into a slice of another length"
    );
    let whole = src.len() - src.len() % 8;
    for c in (0..whole).step_by(8) {
        // SAFETY: `c + 8 <= whole <= len` for both slices.
        unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add(c), E::load8(src.as_ptr().add(c))) };
    }
    for (d, s) in dst[whole..].iter_mut().zip(&src[whole..]) {
        *d = s.to_f32();
    }
}

/// `w · x` for weights of any [`KernelElement`] type and f32 `x` of the same length, widened in
/// registers: four independent sums of eight lanes.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn widening_dot<E: KernelElement>(w: &[E], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    assert_eq!(w.len(), x.len(), "dot product of unequal lengths");
    let whole = w.len() - w.len() % 32;
    let (w_ptr, x_ptr) = (w.as_ptr(), x.as_ptr());
    let mut sums = [_mm256_setzero_ps(); 4];
    for c in (0..whole).step_by(32) {
        for (i, sum) in sums.iter_mut().enumerate() {
            // SAFETY: `c + 8 * i + 8 <= whole <= len` for both slices.
            unsafe {
                let offset = c + 8 * i;
                let product = E::load8(w_ptr.add(offset));
                *sum = _mm256_fmadd_ps(product, _mm256_loadu_ps(x_ptr.add(offset)), *sum);
            }
        }
    }
    let [a, b, c, d] = sums;
    let total = _mm256_add_ps(_mm256_add_ps(a, b), _mm256_add_ps(c, d));
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` holds eight values.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), total) };
    let tail: f32 = w[whole..]
        .iter()
        .zip(&x[whole..])
        .map(|(w, x)| w.to_f32() * x)
        .sum();
    lanes.iter().sum::<f32>() + tail
}

/// Lane `i` of the result is the sum of `sums[i]`'s eight lanes: pairs added within each
/// 128-bit half three times, then the halves (one tree for eight dot products).
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn lane_sums_of_eight(
    sums: [std::arch::x86_64::__m256; 8],
) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let [s0, s1, s2, s3, s4, s5, s6, s7] = sums;
    let low = _mm256_hadd_ps(_mm256_hadd_ps(s0, s1), _mm256_hadd_ps(s2, s3));
    let high = _mm256_hadd_ps(_mm256_hadd_ps(s4, s5), _mm256_hadd_ps(s6, s7));
    _mm256_add_ps(
        _mm256_permute2f128_ps::<0x20>(low, high),
        _mm256_permute2f128_ps::<0x31>(low, high),
    )
}

/// Whether the CPU also has AVX-512BW/DQ and VNNI (integer dot products of bytes), for the
/// integer scores of decode steps over an int8 KV cache
/// ([`int8_attention`](super::int8_attention)). Off wherever [`has_avx512_registers`] is
/// (`KV_ROUTING_KERNELS=avx2` or `=portable`).
#[inline]
pub(crate) fn has_avx512_vnni() -> bool {
    static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        return has_avx512_registers()
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vnni");
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// Asks the CPU to start loading `values` into its cache, one request per 64-byte line (x86-64;
/// nothing elsewhere).
#[inline(always)]
pub(crate) fn prefetch<T>(values: &[T]) {
    #[cfg(target_arch = "x86_64")]
    for line in values.chunks(64 / size_of::<T>()) {
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

    /// Runs every kernel test of this binary again in a child process with
    /// `KV_ROUTING_KERNELS=value`, and checks that it passed and that the child's marker test
    /// (which asserts the variable's effect) ran.
    fn kernels_pass_with(value: &str, marker: &str) {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["kernels::", "--skip", "kernels_pass_on_the_"])
            .env(PORTABLE_KERNELS_VARIABLE, value)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "kernel tests failed with {PORTABLE_KERNELS_VARIABLE}={value}:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.contains(&format!("{marker} ... ok")), "{stdout}");
    }

    /// Every kernel test again with the vector code switched off, so that the portable branches
    /// (what a CPU without AVX2/FMA/F16C runs) are executed and checked against the same
    /// references.
    #[test]
    fn kernels_pass_on_the_portable_path() {
        // Not in a child (or in a run that chose a path already).
        if std::env::var(PORTABLE_KERNELS_VARIABLE).is_err() {
            kernels_pass_with("portable", "the_variable_selects_the_portable_path");
        }
    }

    /// On a CPU with AVX-512F/VL, every kernel test again with the 32-register variants switched
    /// off, so that the 16-register code (what an AVX2 CPU without AVX-512 runs) is checked too.
    #[test]
    fn kernels_pass_on_the_avx2_path() {
        if std::env::var(PORTABLE_KERNELS_VARIABLE).is_err() && has_avx512_registers() {
            kernels_pass_with("avx2", "the_variable_selects_the_avx2_path");
        }
    }

    #[test]
    fn the_variable_selects_the_avx2_path() {
        if std::env::var(PORTABLE_KERNELS_VARIABLE).is_ok_and(|v| v == "avx2") {
            assert!(has_avx2_fma_f16c() && !has_avx512_registers() && !has_avx512_vnni());
        }
    }

    #[test]
    fn the_variable_selects_the_portable_path() {
        if std::env::var(PORTABLE_KERNELS_VARIABLE).is_ok_and(|v| v == "portable") {
            assert!(!has_avx2_fma_f16c());
        }
    }

    #[test]
    fn f16_conversions_equal_halfs_bit_for_bit() {
        // Specials, subnormals, ties and overflow among ordinary values; lengths with tails.
        let mut values = vec![
            0.0f32,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            65504.0,
            65520.0,
            1e9,
            5.96e-8,
            2.98e-8,
            1.0 + 1.0 / 2048.0,
            1.0 + 3.0 / 2048.0,
        ];
        let mut state = 0x2545_f491_u32;
        while values.len() < 1003 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            values.push(f32::from_bits(state) % 70000.0);
        }
        for len in [0, 5, 8, 13, values.len()] {
            let src = &values[..len];
            let (mut ours, mut theirs) = (vec![f16::ZERO; len], vec![f16::ZERO; len]);
            narrow_f16(src, &mut ours);
            theirs.convert_from_f32_slice(src);
            let bits = |v: &[f16]| v.iter().map(|h| h.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&ours), bits(&theirs), "narrowing {len} values");
            let (mut wide, mut reference) = (vec![0.0f32; len], vec![0.0f32; len]);
            widen_f16(&ours, &mut wide);
            ours.convert_to_f32_slice(&mut reference);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&wide), bits(&reference), "widening {len} values");
        }
    }

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
