//! The KV cache appends each step into preallocated storage (`kv_routing::kv_cache::write_slots`,
//! our own write on flex). That must write in place: a copy of the whole storage per step turns
//! decode into O(capacity) per token. burn-flex 0.21.0's own `slice_assign` copies its whole
//! destination; the cache does not go through it on flex.

use burn::tensor::{Tensor, TensorPrimitive};
use burn_flex::{Flex, FlexDevice};
use kv_routing::kv_cache::write_slots;

fn storage_address(tensor: Tensor<Flex, 4>) -> (Tensor<Flex, 4>, usize) {
    let primitive = tensor.into_primitive().tensor();
    let address = primitive.bytes().as_ptr() as usize;
    (
        Tensor::from_primitive(TensorPrimitive::Float(primitive)),
        address,
    )
}

#[test]
fn the_cache_write_into_an_owned_tensor_writes_in_place() {
    let device = FlexDevice;
    let (mut storage, before) = storage_address(Tensor::zeros([2, 4, 1024, 32], &device));
    for step in 0..8 {
        let token = Tensor::<Flex, 4>::ones([2, 4, 1, 32], &device);
        storage = write_slots(storage, 7 + step, token).unwrap();
    }
    let (written, after) = storage_address(storage);
    assert_eq!(before, after, "the cache's write copied its destination");
    let sum: f32 = written.sum().into_scalar();
    assert_eq!(sum, 8.0 * 2.0 * 4.0 * 32.0);
}

#[test]
fn the_run_time_probe_sees_in_place_writes() {
    assert!(kv_routing_flex::cache_writes_in_place());
}

#[test]
fn a_write_into_a_shared_tensor_still_copies() {
    let device = FlexDevice;
    let storage = Tensor::<Flex, 4>::zeros([1, 1, 8, 2], &device);
    let kept = storage.clone();
    let written = write_slots(storage, 0, Tensor::ones([1, 1, 1, 2], &device)).unwrap();
    assert_eq!(kept.sum().into_scalar(), 0.0);
    assert_eq!(written.sum().into_scalar(), 2.0);
}

#[test]
fn slots_past_the_capacity_are_a_typed_error() {
    let device = FlexDevice;
    let storage = Tensor::<Flex, 4>::zeros([1, 1, 8, 2], &device);
    assert!(write_slots(storage, 7, Tensor::ones([1, 1, 2, 2], &device)).is_err());
}
