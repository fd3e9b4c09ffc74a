//! The backend a kv-routing program runs on, chosen at compile time by exactly one feature:
//!
//! | feature   | backend                         | device                                  |
//! |-----------|---------------------------------|-----------------------------------------|
//! | `flex`    | burn-flex (pure-Rust CPU)       | the CPU                                 |
//! | `ndarray` | burn-ndarray (portable CPU)     | the CPU                                 |
//! | `wgpu`    | burn-wgpu (WebGPU over Vulkan/Metal/DX12) | default adapter; `CUBECL_WGPU_DEFAULT_DEVICE=Cpu` picks a software one |
//! | `cuda`    | burn-cuda (NVIDIA)              | GPU 0                                   |
//!
//! Programs (the examples, the CLI, the benchmarks) enable `flex` by default; pick another with
//! `--no-default-features --features wgpu`. No feature, or two, is a compile error.

#[cfg(not(any(
    feature = "ndarray",
    feature = "flex",
    feature = "wgpu",
    feature = "cuda"
)))]
compile_error!(
    "no backend selected: enable exactly one of the features `ndarray`, `flex`, `wgpu`, `cuda` \
     (programs default to `flex`)"
);

#[cfg(any(
    all(
        feature = "ndarray",
        any(feature = "flex", feature = "wgpu", feature = "cuda")
    ),
    all(feature = "flex", any(feature = "wgpu", feature = "cuda")),
    all(feature = "wgpu", feature = "cuda"),
))]
compile_error!(
    "more than one backend selected: enable exactly one of `ndarray`, `flex`, `wgpu`, `cuda`; \
     to replace the default `flex`, add `--no-default-features`, e.g. \
     `--no-default-features --features wgpu`"
);

#[cfg(feature = "ndarray")]
use kv_routing_ndarray as selected;

#[cfg(feature = "flex")]
use kv_routing_flex as selected;

#[cfg(feature = "wgpu")]
use kv_routing_wgpu as selected;

#[cfg(feature = "cuda")]
use kv_routing_cuda as selected;

/// The selected backend type.
pub type Backend = selected::Backend;

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

/// Name of the selected backend, for reports.
pub const NAME: &str = {
    #[cfg(feature = "ndarray")]
    let name = "ndarray";
    #[cfg(feature = "flex")]
    let name = "flex";
    #[cfg(feature = "wgpu")]
    let name = "wgpu";
    #[cfg(feature = "cuda")]
    let name = "cuda";
    name
};
