//! The backend a kv-routing program runs on, chosen at compile time by feature:
//!
//! | feature   | backend                         | device                                  |
//! |-----------|---------------------------------|-----------------------------------------|
//! | `flex`    | burn-flex (pure-Rust CPU)       | the CPU                                 |
//! | `ndarray` | burn-ndarray (portable CPU)     | the CPU                                 |
//! | `wgpu`    | burn-wgpu (WebGPU over Vulkan/Metal/DX12) | default adapter; `CUBECL_WGPU_DEFAULT_DEVICE=Cpu` picks a software one |
//! | `cuda`    | burn-cuda (NVIDIA)              | GPU 0                                   |
//!
//! Programs (the examples, the CLI, the benchmarks) enable `flex` by default. The features are
//! additive, as cargo expects (`cargo build --all-features` works): when several are on, one is
//! chosen by priority — **cuda, then wgpu, then ndarray, then flex** — so the default `flex`
//! yields to any backend added to it (`--features wgpu` picks wgpu, with or without
//! `--no-default-features`), and `--all-features` builds for CUDA. [`NAME`] says which one a
//! program was built with. No feature at all is a compile error.

#![forbid(unsafe_code)]

#[cfg(not(any(
    feature = "ndarray",
    feature = "flex",
    feature = "wgpu",
    feature = "cuda"
)))]
compile_error!(
    "no backend selected: enable one of the features `ndarray`, `flex`, `wgpu`, `cuda` \
     (programs default to `flex`)"
);

// One module per backend, each compiled only when it wins the priority order above.

#[cfg(feature = "cuda")]
mod selected {
    pub use kv_routing_cuda::{device, Backend, Device};
    pub const NAME: &str = "cuda";
    /// The first `n` GPUs.
    pub fn training_devices(n: usize) -> Vec<Device> {
        (0..n).map(|index| Device { index }).collect()
    }
    /// Not probed at run time (tested on a GPU by backends/cuda/run-gpu-checks.sh).
    pub fn cache_writes_in_place() -> Option<bool> {
        None
    }
    pub fn retain_freed_memory() {}
}

#[cfg(all(feature = "wgpu", not(feature = "cuda")))]
mod selected {
    pub use kv_routing_wgpu::{device, Backend, Device};
    pub const NAME: &str = "wgpu";
    /// `n` workers on the one device.
    pub fn training_devices(n: usize) -> Vec<Device> {
        vec![device(); n]
    }
    /// Not probed at run time (tested in backends/wgpu/tests/conformance/in_place_write.rs).
    pub fn cache_writes_in_place() -> Option<bool> {
        None
    }
    pub fn retain_freed_memory() {}
}

#[cfg(all(feature = "ndarray", not(any(feature = "cuda", feature = "wgpu"))))]
mod selected {
    pub use kv_routing_ndarray::{device, Backend, Device};
    pub const NAME: &str = "ndarray";
    /// `n` workers on the one device.
    pub fn training_devices(n: usize) -> Vec<Device> {
        vec![device(); n]
    }
    pub fn cache_writes_in_place() -> Option<bool> {
        Some(kv_routing_ndarray::cache_writes_in_place())
    }
    pub fn retain_freed_memory() {}
}

#[cfg(all(
    feature = "flex",
    not(any(feature = "cuda", feature = "wgpu", feature = "ndarray"))
))]
mod selected {
    pub use kv_routing_flex::{device, Backend, Device};
    pub const NAME: &str = "flex";
    /// `n` workers on the one device.
    pub fn training_devices(n: usize) -> Vec<Device> {
        vec![device(); n]
    }
    pub fn cache_writes_in_place() -> Option<bool> {
        Some(kv_routing_flex::cache_writes_in_place())
    }
    pub fn retain_freed_memory() {
        kv_routing_flex::retain_freed_memory()
    }
}

/// The selected backend type.
pub type Backend = selected::Backend;

/// Applies the selected backend's process-wide allocator policy, for programs that opt in at
/// startup: on flex, `kv_routing_flex::retain_freed_memory` (freed activations kept for reuse;
/// a SmolLM2-135M prefill of 512 tokens spends 21% faulting pages in without it); nothing on the
/// other backends.
pub fn retain_freed_memory() {
    selected::retain_freed_memory()
}

/// The selected backend with automatic differentiation, for training.
pub type AutodiffBackend = burn_autodiff::Autodiff<Backend>;

/// The selected device type.
pub type Device = selected::Device;

/// The device programs run on.
pub fn device() -> Device {
    selected::device()
}

pub use kv_routing::Precision;

/// The device programs run on, with `precision` as the default type of every float tensor
/// created on it (weights as they load, KV caches, activations). Burn fixes a device's default
/// types at its first tensor, so this must come before anything else uses the device; it fails
/// if something already did (with another precision), or if the backend cannot compute in
/// that type.
pub fn device_with_precision(precision: Precision) -> Result<Device, String> {
    use burn::tensor::{DType, Element, FloatDType};
    let device = device();
    let float = match precision {
        // Burn's default: nothing to set (and nothing to fail on a used device).
        Precision::F32 => return Ok(device),
        Precision::F16 => FloatDType::F16,
        Precision::BF16 => FloatDType::BF16,
    };
    let int: DType =
        <<Backend as burn::tensor::backend::BackendTypes>::IntElem as Element>::dtype();
    burn::tensor::set_default_dtypes::<Backend>(&device, float, int)
        .map_err(|e| format!("{NAME} cannot compute in {}: {e:?}", precision.name()))?;
    Ok(device)
}

/// Whether the selected backend writes the KV cache's per-step slices in place, probed at run
/// time on a small tensor: `Some(false)` means each decode step copies every cached layer (flex
/// built without kv-routing's `patches/burn-flex`); `None` for backends without a run-time
/// probe (wgpu and CUDA, whose in-place writes are tested instead). Call it after the device's
/// precision is set ([`device_with_precision`]): it creates tensors on the device.
pub fn cache_writes_in_place() -> Option<bool> {
    selected::cache_writes_in_place()
}

/// `n` devices to train data-parallel on (Burn's multi-device strategy): the first `n` GPUs on
/// cuda; on the CPU backends, and on wgpu (which selects one adapter), `n` workers sharing the
/// one device.
pub fn training_devices(n: usize) -> Vec<Device> {
    selected::training_devices(n)
}

/// Name of the selected backend, for reports.
pub const NAME: &str = selected::NAME;

#[cfg(test)]
mod tests {
    #[test]
    fn the_selected_backend_does_not_copy_the_cache_per_step() {
        assert_ne!(
            super::cache_writes_in_place(),
            Some(false),
            "{}",
            super::NAME
        );
    }
}
