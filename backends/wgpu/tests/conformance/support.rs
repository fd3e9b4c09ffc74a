//! What the wgpu test binaries do on a machine without a wgpu adapter.
//!
//! # Contract
//! - With an adapter, [`device_or_skip`] returns the device (set up once, by
//!   [`kv_routing_wgpu::try_device`]) and the tests run.
//! - Without one, the tests return before touching the device, and the binary says so once, in
//!   one line on stderr that `cargo test` shows even for passing tests: a machine without a
//!   Vulkan driver must be able to run `cargo test --workspace`, but must not take the skipped
//!   tests for passed ones.
//! - With `KV_ROUTING_REQUIRE_WGPU` set (to anything but `0` or nothing) a missing adapter fails
//!   every test instead. CI sets it: it installs a software driver, so a skip there would be a
//!   broken driver passing silently.

use std::io::Write;
use std::sync::Once;

/// The environment variable that turns a missing adapter into a failure.
pub const REQUIRE_WGPU: &str = "KV_ROUTING_REQUIRE_WGPU";

/// The wgpu device, or `None` when the test must return early because there is no adapter.
///
/// # Panics
/// Without an adapter when [`REQUIRE_WGPU`] is set.
pub fn device_or_skip() -> Option<kv_routing_wgpu::Device> {
    let missing = match kv_routing_wgpu::try_device() {
        Ok(device) => return Some(device),
        Err(missing) => missing,
    };
    let required = std::env::var(REQUIRE_WGPU).is_ok_and(|value| !value.is_empty() && value != "0");
    if required {
        panic!("{REQUIRE_WGPU} is set, but there is {missing}");
    }
    static SAID: Once = Once::new();
    SAID.call_once(|| {
        // Straight to the process's stderr: the test harness captures `eprintln!` of passing
        // tests, and every skipped test passes.
        let line = format!(
            "skipped: {missing}: the wgpu tests of this binary returned without running (Mesa's software Vulkan driver, mesa-vulkan-drivers, with CUBECL_WGPU_DEFAULT_DEVICE=Cpu runs them; {REQUIRE_WGPU}=1 makes this a failure)\n"
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    });
    None
}
