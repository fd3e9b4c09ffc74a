//! The KV cache appends each step with `slice_assign` into preallocated storage. That must write
//! in place: a copy of the whole storage per step turns decode into O(capacity) per token.
//! burn-ndarray's arrays are copy-on-write, so a uniquely owned destination is written in place.
//! (That a shared one is copied, the other owner keeping its values, is checked on every backend
//! by the conformance test `views_kept_past_a_step_are_counted`.)

use kv_routing_ndarray::cache_writes_in_place;

#[test]
fn slice_assign_into_an_owned_tensor_writes_in_place() {
    assert!(cache_writes_in_place());
}
