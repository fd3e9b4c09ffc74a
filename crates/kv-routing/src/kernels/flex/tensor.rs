//! The flex tensor behind a generic `Tensor<B, D>` and back.
//!
//! Generic code cannot name `B`'s tensor type, but it can ask whether it *is* flex's. The
//! backend type is checked first ([`is_flex`], a constant per `B`), so that no other backend's
//! tensor is touched; then the float primitive is downcast through `Any`. A quantized tensor is
//! not a float primitive and is refused as it is: asking for its float form would dequantize it.
//! No data is copied: flex tensors share their buffer (`Arc`), and [`into_flex_float`] moves the
//! tensor's own handle so that a uniquely owned buffer stays uniquely owned.

use std::any::Any;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor, TensorPrimitive};
use burn_flex::FlexTensor;

use burn::tensor::ops::FloatTensor;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::Autodiff;
use burn_flex::Flex;

use super::is_flex;

/// The training backend the differentiable kernels register their operations on: flex under
/// Burn's autodiff with its default (no) checkpointing.
pub(crate) type Diff = Autodiff<Flex, NoCheckpointing>;

/// Whether `B` is [`Diff`]. A compile-time constant per `B`.
#[inline]
pub(crate) fn is_autodiff_flex<B: Backend>() -> bool {
    std::any::TypeId::of::<B>() == std::any::TypeId::of::<Diff>()
}

/// The autodiff tensor behind `tensor` (a shared handle: its flex primitive and its graph
/// node), when `B` is [`Diff`] and the tensor is not quantized.
pub(crate) fn diff_float<B: Backend, const D: usize>(
    tensor: &Tensor<B, D>,
) -> Option<FloatTensor<Diff>> {
    if !is_autodiff_flex::<B>() {
        return None;
    }
    let TensorPrimitive::Float(primitive) = tensor.clone().into_primitive() else {
        return None;
    };
    let mut slot = Some(primitive);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<FloatTensor<Diff>>>()?
        .take()
}

/// `tensor` as a `Tensor<B, D>`, when `B` is [`Diff`].
pub(crate) fn from_diff<B: Backend, const D: usize>(
    tensor: FloatTensor<Diff>,
) -> Option<Tensor<B, D>> {
    let mut slot = Some(tensor);
    let primitive = (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<B::FloatTensorPrimitive>>()?
        .take()?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(primitive)))
}

/// The flex tensor behind `tensor` (a shared handle) when `B` is flex and the tensor holds f32,
/// f16 or bf16, the types the kernels read ([`super::vector::KernelElement`]).
pub(crate) fn flex_float<B: Backend, const D: usize>(tensor: &Tensor<B, D>) -> Option<FlexTensor> {
    if !is_flex::<B>() {
        return None;
    }
    into_flex_float(tensor.clone()).ok()
}

/// `tensor`'s own flex tensor, moved out of it, when `B` is flex and the tensor holds f32, f16 or
/// bf16; the tensor back, untouched, otherwise.
pub(crate) fn into_flex_float<B: Backend, const D: usize>(
    tensor: Tensor<B, D>,
) -> Result<FlexTensor, Tensor<B, D>> {
    if !is_flex::<B>() {
        return Err(tensor);
    }
    let primitive = match tensor.into_primitive() {
        TensorPrimitive::Float(primitive) => primitive,
        quantized @ TensorPrimitive::QFloat(_) => return Err(Tensor::from_primitive(quantized)),
    };
    let mut slot = Some(primitive);
    let Some(flex) = (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<FlexTensor>>()
        .and_then(Option::take)
    else {
        // Unreachable while `is_flex` holds; the tensor goes back as it came.
        let primitive = slot.expect("not taken: the downcast failed");
        return Err(Tensor::from_primitive(TensorPrimitive::Float(primitive)));
    };
    if matches!(flex.dtype(), DType::F32 | DType::F16 | DType::BF16) {
        Ok(flex)
    } else {
        Err(from_flex(flex).expect("B is flex and the rank is D's"))
    }
}

/// An integer `tensor`'s own flex tensor, moved out of it (a uniquely owned buffer stays so),
/// when `B` is flex; the tensor back, untouched, otherwise.
pub(crate) fn into_flex_int<B: Backend, const D: usize>(
    tensor: Tensor<B, D, burn::tensor::Int>,
) -> Result<FlexTensor, Tensor<B, D, burn::tensor::Int>> {
    if !is_flex::<B>() {
        return Err(tensor);
    }
    let mut slot = Some(tensor.into_primitive());
    match (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<FlexTensor>>()
        .and_then(Option::take)
    {
        Some(flex) => Ok(flex),
        None => Err(Tensor::from_primitive(
            slot.expect("not taken: the downcast failed"),
        )),
    }
}

/// An integer flex tensor as a `Tensor<B, D, Int>`, when `B` is flex and the ranks agree.
pub(crate) fn from_flex_int<B: Backend, const D: usize>(
    tensor: FlexTensor,
) -> Option<Tensor<B, D, burn::tensor::Int>> {
    if tensor.layout().num_dims() != D {
        return None;
    }
    let mut primitive = Some(tensor);
    let primitive = (&mut primitive as &mut dyn Any)
        .downcast_mut::<Option<B::IntTensorPrimitive>>()?
        .take()?;
    Some(Tensor::from_primitive(primitive))
}

/// The flex tensor behind an integer `tensor` (a shared handle) when `B` is flex and it holds
/// `i8` values (the codes of an int8 KV cache).
pub(crate) fn flex_int8<B: Backend, const D: usize>(
    tensor: &Tensor<B, D, burn::tensor::Int>,
) -> Option<FlexTensor> {
    if !is_flex::<B>() {
        return None;
    }
    let mut slot = Some(tensor.clone().into_primitive());
    let flex = (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<FlexTensor>>()?
        .take()?;
    (flex.dtype() == DType::I8).then_some(flex)
}

/// `tensor` as a `Tensor<B, D>`, when `B` is flex and the ranks agree.
pub(crate) fn from_flex<B: Backend, const D: usize>(tensor: FlexTensor) -> Option<Tensor<B, D>> {
    if tensor.layout().num_dims() != D {
        return None;
    }
    let mut primitive = Some(tensor);
    let primitive = (&mut primitive as &mut dyn Any)
        .downcast_mut::<Option<B::FloatTensorPrimitive>>()?
        .take()?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(primitive)))
}

/// A contiguous tensor of zeros, for a kernel's output.
///
/// burn-flex 0.21's `FlexTensor::empty` zeroes a vector of bytes and then copies it into a
/// buffer aligned for any element (`Bytes::from_bytes_vec`): two passes over fresh pages, 10% of
/// a SmolLM2 training step's samples. A vector of the element's own width is aligned for it, and
/// a zeroed one comes from the allocator's zeroed pages without a pass.
pub(crate) fn zeroed(shape: Shape, dtype: DType) -> FlexTensor {
    match dtype.size() {
        1 => FlexTensor::filled_typed(shape, dtype, 0u8),
        2 => FlexTensor::filled_typed(shape, dtype, 0u16),
        4 => FlexTensor::filled_typed(shape, dtype, 0u32),
        8 => FlexTensor::filled_typed(shape, dtype, 0u64),
        _ => FlexTensor::empty(shape, dtype),
    }
}

/// `values` as a contiguous f32 tensor of `shape`, without a copy.
pub(crate) fn f32_tensor(values: Vec<f32>, shape: Shape) -> FlexTensor {
    debug_assert_eq!(values.len(), shape.num_elements());
    let layout = burn_flex::Layout::contiguous(shape);
    FlexTensor::new(burn::tensor::Bytes::from_elems(values), layout, DType::F32)
}

/// An incoming gradient as f32 values in one contiguous run: cast and copied only when it is
/// not already (a backward pass's input is whatever the ops after it produced).
pub(crate) fn contiguous_f32(tensor: FlexTensor) -> FlexTensor {
    let tensor = if tensor.dtype() == DType::F32 {
        tensor
    } else {
        use burn::tensor::ops::FloatTensorOps;
        Flex::float_cast(tensor, burn::tensor::FloatDType::F32)
    };
    if tensor.as_slice::<f32>().is_some() {
        tensor
    } else {
        tensor.to_contiguous()
    }
}

/// A half-precision (f16, bf16) tensor as a contiguous f32 tensor of the same shape, converted
/// with the CPU's conversion instructions over rayon's pool (flex's own cast goes through an f64
/// copy, element by element); `None` for other element types.
pub(crate) fn widened_half(tensor: &FlexTensor) -> Option<FlexTensor> {
    fn widen<E: super::vector::KernelElement>(tensor: &FlexTensor) -> Option<FlexTensor> {
        if tensor.layout().contiguous_offsets().is_none() {
            if let Some(widened) = widened_rows::<E>(tensor) {
                return Some(widened);
            }
        }
        let tensor = contiguous(tensor);
        let (start, end) = tensor.layout().contiguous_offsets()?;
        let src = &E::storage(&tensor)[start..end];
        let mut out = zeroed(tensor.layout().shape().clone(), DType::F32);
        convert_in_parallel(src, out.storage_mut::<f32>(), E::widen);
        Some(out)
    }
    match tensor.dtype() {
        DType::F16 => widen::<half::f16>(tensor),
        DType::BF16 => widen::<half::bf16>(tensor),
        _ => None,
    }
}

/// A 4-D half-precision tensor whose rows (last axis) are contiguous but not one after the
/// other (the heads view `[batch, heads, seq, head_dim]` of a `[batch, seq, heads * head_dim]`
/// projection) widened row by row into a contiguous f32 tensor: one pass, where a contiguous
/// half copy first (flex's element-by-element strided iterator) and then the widening took two.
/// `None` for other ranks and layouts.
fn widened_rows<E: super::vector::KernelElement>(tensor: &FlexTensor) -> Option<FlexTensor> {
    use super::strided::{Operand, Rows};
    use rayon::prelude::*;
    let operand = Operand::<E>::new(tensor)?;
    let [_, heads, rows, width] = operand.shape;
    if operand.strides[3] != 1 {
        return None;
    }
    let mut out = zeroed(tensor.layout().shape().clone(), DType::F32);
    out.storage_mut::<f32>()
        .par_chunks_mut(rows * width)
        .enumerate()
        .for_each(|(task, dst)| {
            let src = Rows::new(&operand, task / heads, task % heads, 0, rows, width);
            for (j, dst) in dst.chunks_exact_mut(width).enumerate() {
                E::widen(src.row(j), dst);
            }
        });
    Some(out)
}

/// An f32 tensor rounded to the half-precision `dtype` (f16 or bf16), contiguous; `None` for
/// other types.
pub(crate) fn narrowed_half(tensor: &FlexTensor, dtype: DType) -> Option<FlexTensor> {
    fn narrow<E: super::vector::KernelElement>(tensor: &FlexTensor) -> Option<FlexTensor> {
        let tensor = contiguous(tensor);
        let (start, end) = tensor.layout().contiguous_offsets()?;
        let src = &tensor.storage::<f32>()[start..end];
        let mut out = zeroed(tensor.layout().shape().clone(), E::DTYPE);
        convert_in_parallel(src, E::storage_mut(&mut out), E::narrow);
        Some(out)
    }
    if tensor.dtype() != DType::F32 {
        return None;
    }
    match dtype {
        DType::F16 => narrow::<half::f16>(tensor),
        DType::BF16 => narrow::<half::bf16>(tensor),
        _ => None,
    }
}

/// `tensor` itself (a shared handle) when its values are one contiguous run, else a contiguous
/// copy.
fn contiguous(tensor: &FlexTensor) -> FlexTensor {
    if tensor.layout().contiguous_offsets().is_some() {
        tensor.clone()
    } else {
        tensor.to_contiguous()
    }
}

/// `convert(src, dst)` over equal chunks of both, on rayon's pool when they are large.
fn convert_in_parallel<S: Sync, D: Send>(src: &[S], dst: &mut [D], convert: fn(&[S], &mut [D])) {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 15;
    if src.len() <= CHUNK {
        convert(src, dst);
    } else {
        dst.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(dst, src)| convert(src, dst));
    }
}

/// The values of an f32 tensor laid out as one contiguous run (checked by the caller, or made
/// so by [`contiguous_f32`]).
pub(crate) fn contiguous_values(tensor: &FlexTensor) -> &[f32] {
    tensor
        .as_slice::<f32>()
        .expect("an f32 tensor in one contiguous run")
}

/// Compares each named result with its reference, `|a - e| <= relative * max|e| + 1e-6` for
/// every element (a NaN fails), and names the first element that is not close: the training
/// kernels' tests against Burn's ops in f64.
#[cfg(test)]
pub(crate) fn all_close(
    names: &[&str],
    actual: &[Vec<f64>],
    expected: &[Vec<f64>],
    relative: f64,
) -> Result<(), String> {
    for ((name, actual), expected) in names.iter().zip(actual).zip(expected) {
        assert_eq!(actual.len(), expected.len(), "{name}: lengths differ");
        let scale = expected.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let bound = relative * scale + 1e-6;
        if let Some((i, (a, e))) = actual
            .iter()
            .zip(expected)
            .enumerate()
            .find(|(_, (a, e))| (*a - *e).abs() > bound || a.is_nan())
        {
            return Err(format!("{name}[{i}]: {a} against {e} (bound {bound:.2e})"));
        }
    }
    Ok(())
}

/// The values of a flex tensor of any float type, widened to f32, in logical order (the kernels'
/// tests compare them with f64 references).
#[cfg(test)]
pub(crate) fn f32_values<const D: usize>(tensor: &Tensor<burn_flex::Flex, D>) -> Vec<f32> {
    tensor
        .clone()
        .cast(DType::F32)
        .to_data()
        .to_vec::<f32>()
        .unwrap()
}

/// `x W` in f64 for row-major `x` `[rows, in]` and `w` `[in, out]` (the product kernels' tests'
/// reference).
#[cfg(test)]
pub(crate) fn product_reference(
    x: &[f32],
    w: &[f32],
    rows: usize,
    d_input: usize,
    d_output: usize,
) -> Vec<f64> {
    (0..rows * d_output)
        .map(|index| {
            let (r, o) = (index / d_output, index % d_output);
            (0..d_input)
                .map(|i| x[r * d_input + i] as f64 * w[i * d_output + o] as f64)
                .sum()
        })
        .collect()
}

/// `n` pseudo-random values in `[-scale, scale)` from `seed`: a linear congruential generator,
/// for the kernels' tests, which need reproducible inputs rather than statistical quality.
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::quantization::{QuantScheme, QuantStore, QuantValue};
    use burn_flex::Flex;

    #[test]
    fn only_flex_float_tensors_are_taken_and_others_come_back_unchanged() {
        let device = Default::default();
        let t = Tensor::<Flex, 2>::from_floats([[1.0, -2.0], [3.5, 4.0]], &device);
        assert!(flex_float(&t).is_some());
        // f64 is not a kernel type; the tensor comes back with its values.
        let wide = t.clone().cast(DType::F64);
        let back = into_flex_float(wide).unwrap_err();
        assert_eq!(back.dtype(), DType::F64);
        // Autodiff<Flex> is another backend.
        type Diff = burn_autodiff::Autodiff<Flex>;
        assert!(flex_float(&Tensor::<Diff, 2>::ones([2, 2], &device)).is_none());
    }

    #[test]
    fn a_heads_view_is_widened_to_the_values_of_flex_cast() {
        let device = Default::default();
        for dtype in [DType::F16, DType::BF16] {
            // `[batch, seq, heads * head_dim]` seen as `[batch, heads, seq, head_dim]`.
            let projection = Tensor::<Flex, 3>::random(
                [2, 5, 3 * 8],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                &device,
            )
            .cast(dtype);
            let heads = projection.reshape([2, 5, 3, 8]).swap_dims(1, 2);
            let flex = flex_float(&heads).unwrap();
            assert!(
                flex.layout().contiguous_offsets().is_none(),
                "a strided view"
            );
            let widened: Tensor<Flex, 4> = from_flex(widened_half(&flex).unwrap()).unwrap();
            assert_eq!(widened.dims(), [2, 3, 5, 8]);
            assert_eq!(
                widened.into_data().to_vec::<f32>().unwrap(),
                heads.cast(DType::F32).into_data().to_vec::<f32>().unwrap(),
                "{dtype:?}"
            );
        }
    }

    #[test]
    fn a_quantized_tensor_is_refused_without_being_dequantized() {
        let device = Default::default();
        let t = Tensor::<Flex, 2>::from_floats([[1.0, -2.0, 0.5, 3.0]], &device);
        let scheme = QuantScheme::default()
            .with_value(QuantValue::Q8S)
            .with_store(QuantStore::Native);
        let quantized = t.quantize_dynamic(&scheme);
        let before = quantized.dtype();
        assert!(matches!(before, DType::QFloat(_)));
        let back = into_flex_float(quantized).unwrap_err();
        // Still quantized: refused as it was, not turned into floats.
        assert_eq!(back.dtype(), before);
    }
}
