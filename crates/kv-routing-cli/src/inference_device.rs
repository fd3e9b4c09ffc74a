//! The device `eval` and `generate` run on.

use kv_routing_backend::{cache_writes_in_place, device_with_precision, Device, Precision, NAME};

use crate::error::{CliError, Result};

/// The device for inference at `dtype`, after checking that the backend writes the KV cache in
/// place (a warning on stderr if not: every decode step would copy the whole cache).
pub fn inference_device(dtype: Precision) -> Result<Device> {
    let device = device_with_precision(dtype).map_err(CliError::Setting)?;
    if cache_writes_in_place() == Some(false) {
        eprintln!(
            "warning: this build of {NAME} does not write the KV cache in place: every decode \
             step copies every cached layer, so decoding will be slow"
        );
    }
    Ok(device)
}
