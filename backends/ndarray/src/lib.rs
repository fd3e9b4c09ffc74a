//! kv-routing on [burn-ndarray](https://docs.rs/burn-ndarray): the portable CPU backend.
//!
//! `cargo test -p kv-routing-ndarray` runs the whole conformance suite in f32 and f64.

#![forbid(unsafe_code)]

use burn::tensor::{Tensor, TensorPrimitive};
use burn_ndarray::NdArrayTensor;

pub use kv_routing;

/// The backend type.
pub type Backend = burn_ndarray::NdArray<f32>;
/// The device type.
pub type Device = burn_ndarray::NdArrayDevice;

/// The CPU device.
pub fn device() -> Device {
    burn_ndarray::NdArrayDevice::Cpu
}

/// Whether the KV cache's write (`kv_routing::kv_cache::write_slots`, `slice_assign` on ndarray)
/// into a uniquely owned tensor writes into the same buffer, probed on a small tensor by
/// comparing buffer addresses. burn-ndarray 0.21 does (its arrays are copy-on-write and copy
/// only when shared).
pub fn cache_writes_in_place() -> bool {
    let device = device();
    let (storage, before) = buffer_address(Tensor::<Backend, 4>::zeros([1, 2, 64, 8], &device));
    let slot = Tensor::<Backend, 4>::ones([1, 2, 1, 8], &device);
    let Ok(written) = kv_routing::kv_cache::write_slots(storage, 5, slot) else {
        return false;
    };
    let (_, after) = buffer_address(written);
    matches!((before, after), (Some(before), Some(after)) if before == after)
}

/// The address of `tensor`'s buffer (`None` for a type other than f32/f64), and the tensor.
fn buffer_address(tensor: Tensor<Backend, 4>) -> (Tensor<Backend, 4>, Option<usize>) {
    let primitive = tensor.into_primitive().tensor();
    let address = match &primitive {
        NdArrayTensor::F32(storage) => Some(storage.view().as_ptr() as usize),
        NdArrayTensor::F64(storage) => Some(storage.view().as_ptr() as usize),
        _ => None,
    };
    (
        Tensor::from_primitive(TensorPrimitive::Float(primitive)),
        address,
    )
}
