//! The KV cache's append on flex: a step's keys/values written into the cache's preallocated
//! storage in place.
//!
//! burn-flex 0.21.0's `slice_assign` copies its whole destination even when the destination's
//! buffer is uniquely owned (it keeps the original handle alive next to a contiguous clone of
//! it, so its copy-on-write sees a shared buffer): every decode step would copy every cached
//! layer's whole storage, O(capacity) instead of O(step). The cache owns its storage uniquely
//! between steps ([`crate::kv_cache`]), so this write takes the buffer without a copy
//! (`try_storage_mut`, which refuses a shared buffer) and copies only the step's rows into it.
//!
//! # Contract
//! [`write_slots`] writes `values` `[batch, heads, len, head_dim]` at slots `start..start + len`
//! of `storage` `[batch, heads, capacity, head_dim]` and returns the storage, when both are flex
//! tensors of one float type (f32, f16, bf16), the storage is contiguous from offset 0 and its
//! buffer uniquely owned, and the shapes agree. Otherwise it returns both tensors untouched for
//! `slice_assign` (which copies a shared buffer, as copy-on-write must).

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor};
use burn_flex::FlexTensor;
use half::{bf16, f16};

use super::tensor::{flex_int8, from_flex, from_flex_int, into_flex_float, into_flex_int};
use super::vector::StoredElement;

/// See the module docs. `Err` gives back `(storage, values)`.
#[allow(clippy::type_complexity)]
pub(crate) fn write_slots<B: Backend>(
    storage: Tensor<B, 4>,
    start: usize,
    values: Tensor<B, 4>,
) -> Result<Tensor<B, 4>, (Tensor<B, 4>, Tensor<B, 4>)> {
    let mut target = match into_flex_float(storage) {
        Ok(target) => target,
        Err(storage) => return Err((storage, values)),
    };
    let written = match values_of(&values) {
        Some(source) => match target.dtype() {
            DType::F32 => write::<f32>(&mut target, start, &source),
            DType::F16 => write::<f16>(&mut target, start, &source),
            DType::BF16 => write::<bf16>(&mut target, start, &source),
            _ => false,
        },
        None => false,
    };
    let storage = from_flex(target).expect("the storage came from a flex tensor of rank 4");
    if written {
        Ok(storage)
    } else {
        Err((storage, values))
    }
}

/// [`write_slots`] for the int8 codes of a quantized cache: `Err` gives back `(storage, values)`
/// when they are not flex `i8` tensors meeting the same conditions.
#[allow(clippy::type_complexity)]
pub(crate) fn write_int8_slots<B: Backend>(
    storage: Tensor<B, 4, Int>,
    start: usize,
    values: Tensor<B, 4, Int>,
) -> Result<Tensor<B, 4, Int>, (Tensor<B, 4, Int>, Tensor<B, 4, Int>)> {
    let mut target = match into_flex_int(storage) {
        Ok(target) => target,
        Err(storage) => return Err((storage, values)),
    };
    let written = match flex_int8(&values) {
        Some(source) if source.is_contiguous() => {
            target.dtype() == DType::I8 && write::<i8>(&mut target, start, &source)
        }
        Some(source) => {
            target.dtype() == DType::I8 && write::<i8>(&mut target, start, &source.to_contiguous())
        }
        None => false,
    };
    let storage = from_flex_int(target).expect("the storage came from a flex tensor of rank 4");
    if written {
        Ok(storage)
    } else {
        Err((storage, values))
    }
}

/// The step's values as a contiguous flex tensor (a copy of the step, not of the cache, when
/// they are a strided view).
fn values_of<B: Backend>(values: &Tensor<B, 4>) -> Option<FlexTensor> {
    let values = super::tensor::flex_float(values)?;
    Some(if values.is_contiguous() {
        values
    } else {
        values.to_contiguous()
    })
}

/// Writes `source` into `target`'s slots from `start`; `false`, with nothing written, when the
/// contract's conditions do not hold.
fn write<E: StoredElement>(target: &mut FlexTensor, start: usize, source: &FlexTensor) -> bool {
    if source.dtype() != E::DTYPE {
        return false;
    }
    let (target_shape, source_shape) = (target.layout().shape(), source.layout().shape());
    if target_shape.num_dims() != 4 || source_shape.num_dims() != 4 {
        return false;
    }
    let [batch, heads, capacity, head_dim] = [0, 1, 2, 3].map(|axis| target_shape[axis]);
    let len = source_shape[2];
    let fits = source_shape[0] == batch
        && source_shape[1] == heads
        && source_shape[3] == head_dim
        && start.checked_add(len).is_some_and(|end| end <= capacity);
    // The storage must span its buffer from offset 0 in its logical order, so that slot `s`
    // of `[b, h]` is at `((b * heads + h) * capacity + s) * head_dim`.
    let whole_buffer =
        target.layout().contiguous_offsets() == Some((0, batch * heads * capacity * head_dim));
    let Some((source_start, source_end)) = source.layout().contiguous_offsets() else {
        return false;
    };
    if !fits || !whole_buffer || len == 0 {
        return fits && whole_buffer;
    }
    let rows = &E::storage(source)[source_start..source_end];
    let Some(storage) = E::unique_storage_mut(target) else {
        return false;
    };
    let block = len * head_dim;
    for (sequence_head, rows) in rows.chunks_exact(block).enumerate() {
        let offset = (sequence_head * capacity + start) * head_dim;
        storage[offset..offset + block].copy_from_slice(rows);
    }
    true
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, TensorPrimitive};
    use burn_flex::Flex;

    use super::*;
    use crate::kernels::write_slots as dispatched_write;

    fn buffer_address(tensor: Tensor<Flex, 4>) -> (Tensor<Flex, 4>, usize) {
        let primitive = tensor.into_primitive().tensor();
        let address = primitive.bytes().as_ptr() as usize;
        (
            Tensor::from_primitive(TensorPrimitive::Float(primitive)),
            address,
        )
    }

    #[test]
    fn writes_an_owned_storage_in_place_with_the_same_values_as_slice_assign() {
        let device = Default::default();
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let storage = Tensor::<Flex, 4>::zeros([2, 3, 16, 8], &device).cast(dtype);
            let expected_base = storage.clone().cast(DType::F32) + 0.0; // an independent copy
            let (storage, before) = buffer_address(storage);
            // A strided step, as projections hand them over: [b, t, h, d] swapped to [b, h, t, d].
            let step = Tensor::<Flex, 4>::random([2, 5, 3, 8], Distribution::Default, &device)
                .cast(dtype)
                .swap_dims(1, 2);
            let written = dispatched_write(storage, 4, step.clone());
            let (written, after) = buffer_address(written);
            assert_eq!(before, after, "{dtype:?}: the storage was copied");
            let expected =
                expected_base.slice_assign([0..2, 0..3, 4..9, 0..8], step.cast(DType::F32));
            assert_eq!(
                written.cast(DType::F32).to_data().to_vec::<f32>().unwrap(),
                expected.to_data().to_vec::<f32>().unwrap(),
                "{dtype:?}"
            );
        }
    }

    #[test]
    fn a_shared_storage_is_copied_and_the_other_handle_keeps_its_values() {
        let device = Default::default();
        let storage = Tensor::<Flex, 4>::zeros([1, 1, 8, 2], &device);
        let kept = storage.clone();
        let written = dispatched_write(storage, 0, Tensor::ones([1, 1, 1, 2], &device));
        assert_eq!(kept.sum().into_scalar(), 0.0);
        assert_eq!(written.sum().into_scalar(), 2.0);
    }

    #[test]
    fn storage_that_is_a_view_or_another_type_falls_back_to_slice_assign() {
        let device = Default::default();
        // A view into a larger buffer: not the whole buffer from offset 0.
        let view =
            Tensor::<Flex, 4>::zeros([1, 1, 16, 2], &device).slice([0..1, 0..1, 4..12, 0..2]);
        let ones = Tensor::<Flex, 4>::ones([1, 1, 2, 2], &device);
        assert!(write_slots(view, 1, ones.clone()).is_err());
        let wide = Tensor::<Flex, 4>::zeros([1, 1, 8, 2], &device).cast(DType::F64);
        assert!(write_slots(wide.clone(), 1, ones.clone().cast(DType::F64)).is_err());
        // Through the dispatch the fallback still writes.
        let written = dispatched_write(wide, 1, ones.cast(DType::F64));
        assert_eq!(written.sum().into_scalar(), 4.0);
    }

    #[test]
    fn int8_codes_are_written_in_place_and_a_shared_buffer_is_copied() {
        let device = Default::default();
        let address = |tensor: Tensor<Flex, 4, Int>| {
            let flex = into_flex_int(tensor).unwrap();
            let address = flex.bytes().as_ptr() as usize;
            (from_flex_int::<Flex, 4>(flex).unwrap(), address)
        };
        let storage = Tensor::<Flex, 4, Int>::zeros([2, 3, 16, 8], (&device, DType::I8));
        let (storage, before) = address(storage);
        let step =
            Tensor::<Flex, 4>::random([2, 3, 5, 8], Distribution::Uniform(-100.0, 100.0), &device)
                .int()
                .cast(burn::tensor::IntDType::I8);
        let written = crate::kernels::write_int_slots(storage, 4, step.clone());
        let (written, after) = address(written);
        assert_eq!(before, after, "the codes' storage was copied");
        let values = |t: Tensor<Flex, 4, Int>| t.into_data().iter::<i64>().collect::<Vec<_>>();
        assert_eq!(
            values(written.clone().slice([0..2, 0..3, 4..9, 0..8])),
            values(step.clone())
        );
        assert!(values(written.clone().slice([0..2, 0..3, 0..4, 0..8]))
            .iter()
            .all(|&v| v == 0));
        // Copy-on-write: another handle keeps the values it saw.
        let kept = written.clone();
        let rewritten = crate::kernels::write_int_slots(written, 0, step);
        assert!(values(kept.slice([0..2, 0..3, 0..4, 0..8]))
            .iter()
            .all(|&v| v == 0));
        assert!(values(rewritten.slice([0..2, 0..3, 0..4, 0..8]))
            .iter()
            .any(|&v| v != 0));
    }
}
