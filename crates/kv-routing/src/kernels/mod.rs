//! The one place where a backend gets its own kernels.
//!
//! The model is written once over Burn's `Backend` and computes everything with Burn's ops. A
//! few of those ops have a faster form on some backend: today the CPU kernels of burn-flex
//! ([`flex`], feature `flex`). Every call site in the model asks *this* module, and only this
//! module decides whether `B` has a kernel of its own, by one mechanism: the backend's type
//! (`TypeId`), checked before any tensor is touched, then the tensor's primitive moved or cloned
//! out of its `Tensor` (an `Arc` clone, no data) and downcast. A backend without a kernel gets
//! `None` (or the generic op) without its tensors being read, converted or dequantized.
//!
//! # Why a dispatch module and not a backend-extension trait
//! Burn's extension pattern (a trait `KernelBackend: Backend` with a method per kernel,
//! implemented for each backend, as burn-vision does) would put a new bound on every public
//! generic of this crate: users' `B: Backend` would become `B: KernelBackend`, and a model over
//! a backend we never heard of (burn-tch, burn-candle, a user's own, `Autodiff<_>` of any of
//! them, `Fusion<_>`) would not compile until someone wrote an implementation for it. A dispatch
//! module keeps the plain `B: Backend` bound: any backend runs, the ones with kernels run
//! faster. A future CubeCL kernel for wgpu/cuda plugs in the same way as flex's: a folder beside
//! `flex/` with a `TypeId` check for its backend type, and one more branch in the functions
//! below. (`docs/architecture.md` has the same reasoning and the call graph.)
//!
//! # Contract of every function here
//! Each computes exactly what its generic fallback computes (to the rounding documented in the
//! kernel's own module) or returns `None` and leaves the work to Burn's ops. None of them may
//! panic on a shape, layout or element type the generic ops accept: anything a kernel does not
//! handle is `None`.

#[cfg(feature = "flex")]
pub(crate) mod flex;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::block_weight::BlockWeight;
use crate::kv_quantization::QuantizedRows;

/// Causal attention of already scaled queries over keys/values (the queries are the last
/// `seq_len` of the `kv_len` key slots), with the key slots that `key_valid` marks `false`
/// hidden from every query of their sequence, or `None` for Burn's ops.
///
/// # Shapes
/// - query: `[batch, heads, seq_len, head_dim]`
/// - key, value: `[batch, kv_heads, kv_len, head_dim]`
/// - key_valid: `[batch, kv_len]`, row-major, when some slots are holes
/// - output: `[batch, heads, seq_len, head_dim]`
pub(crate) fn causal_attention<B: Backend>(
    query: &Tensor<B, 4>,
    key: &Tensor<B, 4>,
    value: &Tensor<B, 4>,
    key_valid: Option<&[bool]>,
) -> Option<Tensor<B, 4>> {
    #[cfg(feature = "flex")]
    if flex::is_flex::<B>() {
        return flex::attention::causal_attention(query, key, value, key_valid);
    }
    // Training: the differentiable form, for the plain causal mask (training has no holes).
    #[cfg(feature = "flex")]
    if flex::tensor::is_autodiff_flex::<B>() && key_valid.is_none() {
        return flex::training_attention::causal_attention(query, key, value);
    }
    let _ = (query, key, value, key_valid);
    None
}

/// Whether `B`'s attention kernels read a cache's rows in the cache's own format, int8
/// ([`int8_causal_attention`]) or a half-precision float type narrower than the model's
/// ([`causal_attention`]): a cache then hands them over as stored instead of widened.
#[cfg_attr(not(feature = "flex"), allow(clippy::extra_unused_type_parameters))]
pub(crate) fn reads_stored_kv<B: Backend>() -> bool {
    #[cfg(feature = "flex")]
    if flex::is_flex::<B>() {
        return true;
    }
    false
}

/// [`causal_attention`] over keys/values in the int8 format, read in place (widened in
/// registers), or `None` for the caller to widen them and take the float path.
///
/// # Shapes
/// - query: `[batch, heads, seq_len, head_dim]`
/// - key, value: codes `[batch, kv_heads, kv_len, head_dim]`, scales `[batch, kv_heads, kv_len,
///   head_dim / block]`
/// - key_valid: `[batch, kv_len]`, row-major, when some slots are holes
/// - output: `[batch, heads, seq_len, head_dim]`
pub(crate) fn int8_causal_attention<B: Backend>(
    query: &Tensor<B, 4>,
    key: &QuantizedRows<B>,
    value: &QuantizedRows<B>,
    key_valid: Option<&[bool]>,
) -> Option<Tensor<B, 4>> {
    #[cfg(feature = "flex")]
    if flex::is_flex::<B>() {
        return flex::int8_attention::causal_attention(query, key, value, key_valid);
    }
    let _ = (query, key, value, key_valid);
    None
}

/// Cross-entropy of every position of `logits` against `targets` (row-major, each below the
/// vocabulary), differentiable where the backend's autodiff form has a kernel, or `None` for
/// Burn's ops.
///
/// # Shapes
/// - logits: `[batch, seq_len, vocab]`
/// - targets: `batch * seq_len` tokens
/// - output: `[batch, seq_len]`
pub(crate) fn cross_entropy<B: Backend>(
    logits: &Tensor<B, 3>,
    targets: &[u32],
) -> Option<Tensor<B, 2>> {
    #[cfg(feature = "flex")]
    if flex::is_flex::<B>() || flex::tensor::is_autodiff_flex::<B>() {
        return flex::vocab_loss::cross_entropy(logits, targets);
    }
    let _ = (logits, targets);
    None
}

/// `T² KL(softmax(teacher / T) ‖ softmax(student / T))` of every position, differentiable in
/// `student` where the backend's autodiff form has a kernel, or `None` for Burn's ops.
///
/// # Shapes
/// - student, teacher: `[batch, seq_len, vocab]`
/// - output: `[batch, seq_len]`
pub(crate) fn distillation<B: Backend>(
    student: &Tensor<B, 3>,
    teacher: &Tensor<B, 3>,
    temperature: f64,
) -> Option<Tensor<B, 2>> {
    #[cfg(feature = "flex")]
    if flex::is_flex::<B>() || flex::tensor::is_autodiff_flex::<B>() {
        return flex::vocab_loss::distillation(student, teacher, temperature);
    }
    let _ = (student, teacher, temperature);
    None
}

/// `x` rotated by the rotary tables `[cos, cos]` and `[-sin, sin]` of its positions,
/// differentiable in `x` where the backend's autodiff form has a kernel, or `None` for Burn's ops.
///
/// # Shapes
/// - x: `[batch, seq_len, heads, head_dim]`
/// - cos, sin: `[batch, seq_len, 1, head_dim]`
/// - output: `[batch, seq_len, heads, head_dim]`
pub(crate) fn rotary<B: Backend>(
    x: &Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
) -> Option<Tensor<B, 4>> {
    #[cfg(feature = "flex")]
    if flex::is_flex::<B>() || flex::tensor::is_autodiff_flex::<B>() {
        return flex::rotary::rotate(x, cos, sin);
    }
    let _ = (x, cos, sin);
    None
}

/// Whether `B` multiplies [`BlockWeight`]s where they lie ([`block_product`]): a model then keeps
/// them as blocks, and on other backends widens them to floats at first use.
#[cfg_attr(not(feature = "flex"), allow(clippy::extra_unused_type_parameters))]
pub(crate) fn multiplies_blocks<B: Backend>() -> bool {
    #[cfg(feature = "flex")]
    if flex::is_flex::<B>() {
        return true;
    }
    false
}

/// Whether `B` on this CPU takes the integer products that
/// [`BlockWeight::with_int8_prompt_products`] asks for: flex, with AVX-512 VNNI or AVX2.
#[cfg_attr(not(feature = "flex"), allow(clippy::extra_unused_type_parameters))]
pub(crate) fn multiplies_int8_prompts<B: Backend>() -> bool {
    #[cfg(feature = "flex")]
    if flex::is_flex::<B>() {
        return flex::integer_product::IntegerKernel::detected().is_some();
    }
    false
}

/// `x Wᵀ` for a block matrix `W` read in place, or `None` for the float product with its
/// dequantized form.
///
/// # Shapes
/// - x: `[rows, in]`
/// - blocks: `[out, in]`
/// - output: `[rows, out]`
pub(crate) fn block_product<B: Backend>(
    x: &Tensor<B, 2>,
    blocks: &BlockWeight,
) -> Option<Tensor<B, 2>> {
    #[cfg(feature = "flex")]
    if flex::is_flex::<B>() {
        return flex::block_product::block_product(x, blocks);
    }
    let _ = (x, blocks);
    None
}

/// `x W` for a product of one or a few rows, or `None` for the backend's matmul.
///
/// # Shapes
/// - x: `[rows, in]`
/// - weight: `[in, out]`
/// - output: `[rows, out]`
pub(crate) fn few_row_product<B: Backend>(
    x: &Tensor<B, 2>,
    weight: &Tensor<B, 2>,
) -> Option<Tensor<B, 2>> {
    #[cfg(feature = "flex")]
    if flex::is_flex::<B>() {
        return flex::matvec::matvec(x, weight);
    }
    let _ = (x, weight);
    None
}

/// `x W` with its own backward pass when training (on `Autodiff<Flex>`, f32), or `None` for
/// the backend's matmul.
///
/// # Shapes
/// - x: `[rows, in]`
/// - weight: `[in, out]`
/// - output: `[rows, out]`
pub(crate) fn training_product<B: Backend>(
    x: &Tensor<B, 2>,
    weight: &Tensor<B, 2>,
) -> Option<Tensor<B, 2>> {
    #[cfg(feature = "flex")]
    if flex::tensor::is_autodiff_flex::<B>() {
        return flex::training_linear::linear(x, weight);
    }
    let _ = (x, weight);
    None
}

/// `x W` for many rows of a half-precision product, in f32 arithmetic, or `None` for the
/// backend's matmul (on flex, whose own half-precision product is about 3x slower than its f32
/// one).
///
/// # Shapes
/// - x: `[rows, in]`
/// - weight: `[in, out]`
/// - output: `[rows, out]`
pub(crate) fn half_product<B: Backend>(
    x: &Tensor<B, 2>,
    weight: &Tensor<B, 2>,
) -> Option<Tensor<B, 2>> {
    #[cfg(feature = "flex")]
    if flex::is_flex::<B>() {
        return flex::half_product::half_product(x, weight);
    }
    let _ = (x, weight);
    None
}

/// `x + y` for tensors of one shape: the residual stream's sums. On flex, half-precision
/// operands are added by [`flex::half_elementwise`] (flex's own half-precision add runs one
/// element at a time), in place into `x` where its buffer is its own; Burn's add otherwise.
pub(crate) fn residual_add<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    y: Tensor<B, D>,
) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let (x, y) = if flex::is_flex::<B>() {
        match flex::half_elementwise::add(x, y) {
            Ok(sum) => return sum,
            Err(operands) => operands,
        }
    } else {
        (x, y)
    };
    x + y
}

/// `x * s`: the queries' scale. On flex, a half-precision `x` is scaled by
/// [`flex::half_elementwise`], in place where its buffer is its own; Burn's `mul_scalar`
/// otherwise.
pub(crate) fn mul_scalar<B: Backend, const D: usize>(x: Tensor<B, D>, s: f64) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let x = if flex::is_flex::<B>() {
        match flex::half_elementwise::scale(x, s) {
            Ok(scaled) => return scaled,
            Err(x) => x,
        }
    } else {
        x
    };
    x.mul_scalar(s)
}

/// `x` in the contiguous layout where flex copies it faster than Burn's `reshape` would
/// ([`flex::contiguous`]: a row at a time instead of an element at a time); `x` otherwise.
pub(crate) fn contiguous<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    if flex::is_flex::<B>() {
        if let Some(copy) = flex::contiguous::contiguous(&x) {
            return copy;
        }
    }
    x
}

/// SwiGLU's gate `silu(gate) * up`, or `None` for Burn's ops.
pub(crate) fn swiglu<B: Backend, const D: usize>(
    gate: &Tensor<B, D>,
    up: &Tensor<B, D>,
) -> Option<Tensor<B, D>> {
    #[cfg(feature = "flex")]
    if flex::is_flex::<B>() {
        return flex::swiglu::swiglu(gate, up);
    }
    #[cfg(feature = "flex")]
    if flex::tensor::is_autodiff_flex::<B>() {
        return flex::training_swiglu::swiglu(gate, up);
    }
    let _ = (gate, up);
    None
}

/// `x / sqrt(mean(x², last axis) + epsilon) * gamma`, or `None` for Burn's ops.
pub(crate) fn rms_norm<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    gamma: &Tensor<B, 1>,
    epsilon: f64,
) -> Option<Tensor<B, D>> {
    #[cfg(feature = "flex")]
    if flex::is_flex::<B>() {
        return flex::rms_norm::rms_norm(x, gamma, epsilon);
    }
    #[cfg(feature = "flex")]
    if flex::tensor::is_autodiff_flex::<B>() {
        return flex::training_rms_norm::rms_norm(x, gamma, epsilon);
    }
    let _ = (x, gamma, epsilon);
    None
}

/// `storage` with `values` written at slots `start..start + values.dims()[2]` of its third
/// axis: the KV cache's append. In place whenever `storage`'s buffer is uniquely owned (flex:
/// our own write, [`flex::slot_write`]; other backends: their `slice_assign`, which writes a
/// uniquely owned buffer in place on ndarray and wgpu), a copy of `storage` otherwise.
///
/// # Shapes
/// - storage: `[batch, heads, capacity, head_dim]`
/// - values: `[batch, heads, len, head_dim]`, `start + len <= capacity` (the caller checks)
pub(crate) fn write_slots<B: Backend>(
    storage: Tensor<B, 4>,
    start: usize,
    values: Tensor<B, 4>,
) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    let (storage, values) = if flex::is_flex::<B>() {
        match flex::slot_write::write_slots(storage, start, values) {
            Ok(written) => return written,
            Err(unwritten) => unwritten,
        }
    } else {
        (storage, values)
    };
    slice_assign_slots(storage, start, values)
}

/// Burn's write of `values` at slots `start..` of every sequence and head of `storage` (a copy
/// of the whole storage on backends whose `slice_assign` copies).
fn slice_assign_slots<B: Backend, K: burn::tensor::BasicOps<B>>(
    storage: Tensor<B, 4, K>,
    start: usize,
    values: Tensor<B, 4, K>,
) -> Tensor<B, 4, K> {
    let [batch, heads, len, head_dim] = values.dims();
    storage.slice_assign(
        [0..batch, 0..heads, start..start + len, 0..head_dim],
        values,
    )
}

/// `tensor` in the float type `dtype`: on flex, between f32 and a half type, one parallel pass
/// (Burn 0.21's flex casts element by element on one thread: an f16 KV cache read back for an
/// f32 model took longer than the rest of the decode step); Burn's cast otherwise.
pub(crate) fn cast_float<B: Backend, const D: usize>(
    tensor: Tensor<B, D>,
    dtype: burn::tensor::DType,
) -> Tensor<B, D> {
    if tensor.dtype() == dtype {
        return tensor;
    }
    #[cfg(feature = "flex")]
    if let Some(flex) = flex::tensor::flex_float(&tensor) {
        use burn::tensor::DType;
        let converted = match (flex.dtype(), dtype) {
            (DType::F16 | DType::BF16, DType::F32) => flex::tensor::widened_half(&flex),
            (DType::F32, DType::F16 | DType::BF16) => flex::tensor::narrowed_half(&flex, dtype),
            _ => None,
        };
        if let Some(converted) = converted.and_then(flex::tensor::from_flex) {
            return converted;
        }
    }
    tensor.cast(burn::tensor::FloatDType::from(dtype))
}

/// Rows quantized into the int8 KV format in one pass on flex
/// ([`flex::quantize`]); `None` elsewhere (the caller uses Burn's ops).
pub(crate) fn quantize_rows<B: Backend>(
    rows: &Tensor<B, 4>,
    block: usize,
    codes: burn::tensor::DType,
) -> Option<crate::kv_quantization::QuantizedRows<B>> {
    #[cfg(feature = "flex")]
    if let Some(quantized) = flex::quantize::quantize_rows(rows, block, codes) {
        return Some(quantized);
    }
    let _ = (rows, block, codes);
    None
}

/// [`write_slots`] for integer storage (the codes of an int8 cache): flex's own in-place write
/// for `i8` codes, `slice_assign` otherwise.
pub(crate) fn write_int_slots<B: Backend>(
    storage: Tensor<B, 4, burn::tensor::Int>,
    start: usize,
    values: Tensor<B, 4, burn::tensor::Int>,
) -> Tensor<B, 4, burn::tensor::Int> {
    #[cfg(feature = "flex")]
    let (storage, values) = if flex::is_flex::<B>() {
        match flex::slot_write::write_int8_slots(storage, start, values) {
            Ok(written) => return written,
            Err(unwritten) => unwritten,
        }
    } else {
        (storage, values)
    };
    slice_assign_slots(storage, start, values)
}

/// `a` and `b`, two computations independent of each other, at once on rayon's pool when `B` is
/// flex or flex under autodiff (while one waits at the end of a product split across the
/// threads, the other's work fills the wait); one after the other on the calling thread on every
/// other backend (a GPU backend queues both on one device anyway).
#[cfg_attr(not(feature = "flex"), allow(clippy::extra_unused_type_parameters))]
pub(crate) fn join_on_compute_threads<B: Backend, RA: Send, RB: Send>(
    a: impl FnOnce() -> RA + Send,
    b: impl FnOnce() -> RB + Send,
) -> (RA, RB) {
    #[cfg(feature = "flex")]
    if flex::is_flex::<B>() || flex::tensor::is_autodiff_flex::<B>() {
        return rayon::join(a, b);
    }
    (a(), b())
}

/// Runs `work` where `B` computes fastest when called from it: on rayon's pool for flex when
/// the caller is outside the pool ([`flex::pool`]), on the calling thread otherwise.
// Without the `flex` feature no backend is moved, and `B` only keeps the call sites the same.
#[cfg_attr(not(feature = "flex"), allow(clippy::extra_unused_type_parameters))]
pub(crate) fn on_compute_threads<B: Backend, R: Send>(work: impl FnOnce() -> R + Send) -> R {
    #[cfg(feature = "flex")]
    if flex::is_flex::<B>() {
        return flex::pool::run_on_pool(work);
    }
    work()
}
