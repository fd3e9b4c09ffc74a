//! kv-routing on [burn-ndarray](https://docs.rs/burn-ndarray): the portable CPU backend.
//!
//! `cargo test -p kv-routing-ndarray` runs the whole conformance suite in f32 and f64.

pub use kv_routing;

/// The backend type.
pub type Backend = burn_ndarray::NdArray<f32>;
/// The device type.
pub type Device = burn_ndarray::NdArrayDevice;

/// The CPU device.
pub fn device() -> Device {
    burn_ndarray::NdArrayDevice::Cpu
}
