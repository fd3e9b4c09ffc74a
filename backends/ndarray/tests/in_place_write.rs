//! The KV cache appends each step with `slice_assign` into preallocated storage. That must write
//! in place: a copy of the whole storage per step turns decode into O(capacity) per token.
//! burn-ndarray's arrays are copy-on-write, so a uniquely owned destination is written in place
//! and a shared one is copied (the other owner keeps its values).

use burn::tensor::Tensor;
use kv_routing_ndarray::{device, slice_assign_writes_in_place, Backend};

#[test]
fn slice_assign_into_an_owned_tensor_writes_in_place() {
    assert!(slice_assign_writes_in_place());
}

#[test]
fn slice_assign_into_a_shared_tensor_still_copies() {
    let device = device();
    let storage = Tensor::<Backend, 4>::zeros([1, 1, 8, 2], &device);
    let kept = storage.clone();
    let written = storage.slice_assign(
        [0..1, 0..1, 0..1, 0..2],
        Tensor::ones([1, 1, 1, 2], &device),
    );
    assert_eq!(kept.sum().into_scalar(), 0.0);
    assert_eq!(written.sum().into_scalar(), 2.0);
}
