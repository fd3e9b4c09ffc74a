//! The KV cache appends each step with `slice_assign` into preallocated storage. That must write
//! in place: a copy of the whole storage per step turns decode into O(capacity) per token. The
//! crates.io burn-flex 0.21.0 copies (see patches/README.md); this fails without the patch.

use burn::tensor::{Tensor, TensorPrimitive};
use burn_flex::{Flex, FlexDevice};

fn storage_address(tensor: Tensor<Flex, 4>) -> (Tensor<Flex, 4>, usize) {
    let primitive = tensor.into_primitive().tensor();
    let address = primitive.storage::<f32>().as_ptr() as usize;
    (
        Tensor::from_primitive(TensorPrimitive::Float(primitive)),
        address,
    )
}

#[test]
fn slice_assign_into_an_owned_tensor_writes_in_place() {
    let device = FlexDevice;
    let (storage, before) = storage_address(Tensor::zeros([2, 4, 1024, 32], &device));
    let step = Tensor::<Flex, 4>::ones([2, 4, 1, 32], &device);
    let written = storage.slice_assign([0..2, 0..4, 7..8, 0..32], step);
    let (written, after) = storage_address(written);
    assert_eq!(before, after, "slice_assign copied its destination");
    let sum: f32 = written.sum().into_scalar();
    assert_eq!(sum, 2.0 * 4.0 * 32.0);
}

#[test]
fn the_run_time_probe_sees_in_place_writes() {
    assert!(kv_routing_flex::slice_assign_writes_in_place());
}

#[test]
fn slice_assign_into_a_shared_tensor_still_copies() {
    let device = FlexDevice;
    let storage = Tensor::<Flex, 4>::zeros([1, 1, 8, 2], &device);
    let kept = storage.clone();
    let written = storage.slice_assign(
        [0..1, 0..1, 0..1, 0..2],
        Tensor::ones([1, 1, 1, 2], &device),
    );
    assert_eq!(kept.sum().into_scalar(), 0.0);
    assert_eq!(written.sum().into_scalar(), 2.0);
}
