//! kv-routing on [burn-flex](https://docs.rs/burn-flex): Burn 0.21's fast pure-Rust CPU backend.
//!
//! `cargo test -p kv-routing-flex` runs the whole conformance suite.
//!
//! The KV cache's per-step writes go through kv-routing's own in-place write on flex
//! (`kv_routing::kv_cache::write_slots`), not burn-flex's `slice_assign` (whose 0.21.0 release
//! copies its whole destination): a plain dependency on this crate gets fast decode, with no
//! `[patch]`. [`cache_writes_in_place`] probes it at run time.

#![deny(clippy::undocumented_unsafe_blocks)]

use burn::tensor::{Tensor, TensorPrimitive};

pub use kv_routing;

/// The backend type.
pub type Backend = burn_flex::Flex;
/// The device type.
pub type Device = burn_flex::FlexDevice;

/// The CPU device. Programs that want flex's allocations reused call [`retain_freed_memory`]
/// once at startup (an opt-in: it changes the whole process's allocator).
pub fn device() -> Device {
    burn_flex::FlexDevice
}

/// Keeps freed memory in the process for the next allocation instead of returning it to the
/// OS (glibc only; nothing elsewhere).
///
/// flex allocates every op's output. By default glibc serves blocks over 128 KiB (a prefill's
/// activations are megabytes) with `mmap` and unmaps them on free, so every layer faults its
/// buffers in again, page by page: 21% of a SmolLM2-135M prefill of 512 tokens, 12% at 2,048
/// (docs/benchmarks.md). Raising the mmap threshold to glibc's maximum (32 MiB) and never
/// trimming the heap makes freed blocks reusable. The cost is that the process keeps its peak
/// heap, which is why this is a process-wide choice a program makes (the `kv-routing` CLI and the
/// benchmarks do, at startup), never a side effect of a library call.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's parameters; it is called before the
    // backend allocates, and a refused value leaves the default (its result is ignored).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Whether the KV cache's write (`kv_routing::kv_cache::write_slots`) into a uniquely owned
/// storage writes into the same buffer, probed once on a small tensor by comparing buffer
/// addresses.
pub fn cache_writes_in_place() -> bool {
    let device = burn_flex::FlexDevice;
    let (storage, before) = buffer_address(Tensor::<Backend, 4>::zeros([1, 2, 64, 8], &device));
    let slot = Tensor::<Backend, 4>::ones([1, 2, 1, 8], &device);
    match kv_routing::kv_cache::write_slots(storage, 5, slot) {
        Ok(written) => buffer_address(written).1 == before,
        Err(_) => false,
    }
}

/// The address of `tensor`'s buffer, and the tensor back.
fn buffer_address(tensor: Tensor<Backend, 4>) -> (Tensor<Backend, 4>, usize) {
    let primitive = tensor.into_primitive().tensor();
    let address = primitive.bytes().as_ptr() as usize;
    (
        Tensor::from_primitive(TensorPrimitive::Float(primitive)),
        address,
    )
}
