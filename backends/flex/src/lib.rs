//! kv-routing on [burn-flex](https://docs.rs/burn-flex): Burn 0.21's fast pure-Rust CPU backend.
//!
//! `cargo test -p kv-routing-flex` runs the whole conformance suite.

pub use kv_routing;

/// The backend type.
pub type Backend = burn_flex::Flex;
/// The device type.
pub type Device = burn_flex::FlexDevice;

/// The CPU device.
pub fn device() -> Device {
    burn_flex::FlexDevice
}
