//! kv-routing on [burn-wgpu](https://docs.rs/burn-wgpu): WebGPU through Vulkan, Metal or DX12.
//!
//! The device is cubecl's default adapter, which prefers a discrete GPU. Set
//! `CUBECL_WGPU_DEFAULT_DEVICE=Cpu` to pick a software adapter such as Mesa's `llvmpipe`
//! (lavapipe), which is how CI runs the conformance suite on machines without a GPU.

pub use kv_routing;

/// The backend type (with Burn's kernel fusion, as burn-wgpu ships by default).
pub type Backend = burn_wgpu::Wgpu;
/// The device type.
pub type Device = burn_wgpu::WgpuDevice;

/// The default adapter (see the crate docs for picking a software one).
pub fn device() -> Device {
    burn_wgpu::WgpuDevice::DefaultDevice
}
