//! The KV cache appends each decode step with `slice_assign` into preallocated
//! `[batch, heads, capacity, head_dim]` storage. That must write in place: a copy of the whole
//! storage per step turns decode into O(capacity) per token. On burn-wgpu the write goes through
//! burn-fusion, which hands the kernel the destination's buffer as mutable only when no other
//! tensor holds it; burn-cubecl's `slice_assign` otherwise copies (copy-on-write), which is what
//! must still happen while a clone is alive.
//!
//! The observable is the storage itself, as in the flex test: the wgpu buffer and byte offset
//! behind the destination, reached by resolving the fusion tensor to its `CubeTensor` and asking
//! the compute client for the handle's resource. A copy is allocated while its source is still
//! alive, so it can never land at the same buffer and offset; equal storage means no copy, with no
//! dependence on allocator statistics. The shared-tensor test doubles as the check that this
//! observable does see a copy.

use burn::tensor::{Tensor, TensorPrimitive};
use kv_routing_wgpu::Backend;

use crate::support;

/// What `Backend` (burn-fusion) runs on; resolving a fusion tensor yields this backend's tensor.
type Inner = burn_wgpu::CubeBackend<burn_wgpu::WgpuRuntime, f32, i32, u32>;

const BATCH: usize = 2;
const HEADS: usize = 8;
const CAPACITY: usize = 1024;
const HEAD_DIM: usize = 512;
// 2 * 8 * 1024 * 512 f32 = 32 MiB: a copy of it is a whole new buffer, not allocator noise.
const STEPS: usize = 8;

/// The buffer and byte offset that `tensor` lives at.
///
/// Resolves a clone, so `tensor` keeps its own handle; the resolved tensor (and with it the
/// extra reference to the buffer) is dropped before returning, so `tensor` is uniquely owned
/// again afterwards. Resolving also runs everything queued on the tensor's stream.
fn storage(tensor: &Tensor<Backend, 4>) -> impl PartialEq + std::fmt::Debug {
    let fusion = match tensor.clone().into_primitive() {
        TensorPrimitive::Float(fusion) => fusion,
        TensorPrimitive::QFloat(_) => panic!("the cache storage is a float tensor"),
    };
    let cube = fusion.client.clone().resolve_tensor_float::<Inner>(fusion);
    let resource = cube
        .client
        .get_resource(cube.handle.clone())
        .expect("the resolved tensor has a wgpu resource");
    let resource = resource.resource();
    (resource.buffer.clone(), resource.offset)
}

#[test]
fn slice_assign_into_an_owned_tensor_writes_in_place() {
    let Some(device) = support::device_or_skip() else {
        return;
    };
    let mut cache = Tensor::<Backend, 4>::zeros([BATCH, HEADS, CAPACITY, HEAD_DIM], &device);
    let before = storage(&cache);
    let query = Tensor::<Backend, 4>::ones([BATCH, HEADS, 1, HEAD_DIM], &device);
    let mut scores = Vec::with_capacity(STEPS);
    for step in 0..STEPS {
        let token = Tensor::full([BATCH, HEADS, 1, HEAD_DIM], (step + 1) as f32, &device);
        cache = cache.slice_assign([0..BATCH, 0..HEADS, step..step + 1, 0..HEAD_DIM], token);
        // Read the written prefix through a view, as attention does between writes. The view
        // shares the buffer, so it is dropped (here, at the end of the statement) before the next
        // write; the scores it produced are separate tensors and stay alive.
        let visible = cache
            .clone()
            .slice([0..BATCH, 0..HEADS, 0..step + 1, 0..HEAD_DIM]);
        scores.push(query.clone().matmul(visible.swap_dims(2, 3)));
        assert_eq!(
            storage(&cache),
            before,
            "step {step}: slice_assign copied its uniquely owned destination"
        );
    }

    // The writes landed: row `step` holds `step + 1`, and the rest of the storage is untouched
    // (every value is non-negative, so the total sum pins the zeros beyond the written rows).
    let written = cache
        .clone()
        .slice([0..BATCH, 0..HEADS, 0..STEPS, 0..HEAD_DIM])
        .into_data()
        .to_vec::<f32>()
        .expect("f32 data");
    for (index, value) in written.iter().enumerate() {
        let step = (index / HEAD_DIM) % STEPS;
        assert_eq!(*value, (step + 1) as f32, "element {index} (row {step})");
    }
    let row = (BATCH * HEADS * HEAD_DIM) as f32;
    let expected = row * (STEPS * (STEPS + 1) / 2) as f32;
    assert_eq!(cache.sum().into_scalar(), expected);
    // Each step's attention read saw exactly the rows written so far.
    for (step, score) in scores.into_iter().enumerate() {
        let seen: f32 = score.sum().into_scalar();
        let rows = (step + 1) * (step + 2) / 2;
        assert_eq!(seen, row * rows as f32, "scores of step {step}");
    }
}

#[test]
fn slice_assign_into_a_shared_tensor_still_copies() {
    let Some(device) = support::device_or_skip() else {
        return;
    };
    let cache = Tensor::<Backend, 4>::zeros([BATCH, HEADS, CAPACITY, HEAD_DIM], &device);
    let kept = cache.clone();
    let token = Tensor::ones([BATCH, HEADS, 1, HEAD_DIM], &device);
    let written = cache.slice_assign([0..BATCH, 0..HEADS, 0..1, 0..HEAD_DIM], token);
    assert_ne!(
        storage(&written),
        storage(&kept),
        "slice_assign wrote into a buffer that a clone still holds"
    );
    assert_eq!(kept.sum().into_scalar(), 0.0);
    assert_eq!(
        written.sum().into_scalar(),
        (BATCH * HEADS * HEAD_DIM) as f32
    );
}
