//! kv-routing on [burn-wgpu](https://docs.rs/burn-wgpu): WebGPU through Vulkan, Metal or DX12.
//!
//! The device is cubecl's default adapter, which prefers a discrete GPU. Set
//! `CUBECL_WGPU_DEFAULT_DEVICE=Cpu` to pick a software adapter such as Mesa's `llvmpipe`
//! (lavapipe), which is how CI runs the conformance suite on machines without a GPU.
//!
//! # Without an adapter
//! cubecl sets a device up lazily, on its own runner thread, the first time a tensor touches
//! it; with no adapter that thread panics and the caller dies of a bare `RecvError`. To learn
//! that there is no adapter without panicking, call [`try_device`] *before anything else uses
//! the device*: it sets the device up on the calling thread, catches the failure and returns
//! its reason as [`NoAdapter`].

#![forbid(unsafe_code)]

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use burn_wgpu::graphics::AutoGraphicsApi;
use burn_wgpu::RuntimeOptions;

pub use kv_routing;

/// The backend type (with Burn's kernel fusion, as burn-wgpu ships by default).
pub type Backend = burn_wgpu::Wgpu;
/// The device type.
pub type Device = burn_wgpu::WgpuDevice;

/// The default adapter (see the crate docs for picking a software one).
pub fn device() -> Device {
    burn_wgpu::WgpuDevice::DefaultDevice
}

/// No wgpu adapter could be set up for [`device`]: no GPU and no software driver, or none of
/// the kind `CUBECL_WGPU_DEFAULT_DEVICE` asks for. Holds cubecl's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoAdapter(pub String);

impl fmt::Display for NoAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no wgpu adapter ({})", self.0)
    }
}

impl std::error::Error for NoAdapter {}

/// [`device`], set up on first call; [`NoAdapter`] when there is none to set up.
///
/// # Contract
/// - The first call in a process does the setup that the first tensor operation would
///   otherwise do lazily, with the same options (cubecl's defaults and its automatic graphics
///   API), so the device behaves the same either way. Later calls return the first answer.
/// - Call it before anything else uses [`device`] in the process: cubecl sets a device up only
///   once, so after a lazy setup this one is refused, and that refusal is reported as
///   [`NoAdapter`] too (its reason says so).
/// - Without an adapter, cubecl's panic message still reaches the panic hook (stderr, or the
///   test's captured output); the panic itself stops here.
pub fn try_device() -> Result<Device, NoAdapter> {
    static SETUP: OnceLock<Result<(), NoAdapter>> = OnceLock::new();
    SETUP
        .get_or_init(|| {
            // cubecl reports a missing adapter only by panicking (`expect` on the adapter
            // request); setting the device up here, on this thread, is what makes that panic
            // catchable instead of killing cubecl's runner thread.
            catch_unwind(AssertUnwindSafe(|| {
                burn_wgpu::init_setup::<AutoGraphicsApi>(&device(), RuntimeOptions::default());
            }))
            .map_err(|payload| NoAdapter(panic_message(payload.as_ref())))
        })
        .clone()
        .map(|()| device())
}

/// The text of a panic payload (`panic!` with a message yields a `String` or a `&str`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("cubecl's device setup panicked without a message")
        .to_string()
}
