//! kv-routing on [burn-cuda](https://docs.rs/burn-cuda): NVIDIA GPUs.
//!
//! Compiles without the CUDA toolkit (the driver is loaded at run time). The conformance tests
//! need a GPU; `run-gpu-checks.sh` builds and runs them, with the benchmarks, on a GPU machine.

#![forbid(unsafe_code)]

pub use kv_routing;

/// The backend type (with Burn's kernel fusion, as burn-cuda ships by default).
pub type Backend = burn_cuda::Cuda;
/// The device type.
pub type Device = burn_cuda::CudaDevice;

/// The first GPU.
pub fn device() -> Device {
    burn_cuda::CudaDevice::default()
}
