//! The device `eval` and `generate` run on, and their `--int8-prompts` setting.

use kv_routing_backend::{
    cache_writes_in_place, device_with_precision, Backend, Device, Precision, NAME,
};

use kv_routing::BlockWeight;
use kv_routing_hf::WeightStorage;

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

/// `--int8-prompts` checked against `--weights`: it multiplies Q8_0 and Q4_1 blocks, so it needs
/// weights kept as blocks (`as-stored`, `q8_0` or `q4_1`); asking for it with float weights is
/// an error rather than a flag that silently does nothing. Where the backend or the CPU has no
/// integer products (flex on AVX-512 VNNI or AVX2), a note on stderr says that the prompts take
/// the float products (and give the results of a run without the option).
pub fn int8_prompts_setting(weights: WeightStorage, int8_prompts: bool) -> Result<bool> {
    if int8_prompts && weights == WeightStorage::Float {
        return Err(CliError::Setting(
            "--int8-prompts multiplies Q8_0 and Q4_1 blocks as integers: give --weights as-stored (a GGUF file's Q8_0 and Q4_1 matrices), q8_0 or q4_1".into(),
        ));
    }
    if int8_prompts && !BlockWeight::int8_prompt_products_run_on::<Backend>() {
        let why = if NAME == "flex" {
            "this CPU has no AVX2 (or KV_ROUTING_KERNELS=portable switched it off)".to_string()
        } else {
            format!("this build's backend is {NAME}")
        };
        eprintln!(
            "note: --int8-prompts changes nothing here: integer products need the flex backend \
             on a CPU with AVX2 or AVX-512 VNNI, and {why}; prompts take the float products"
        );
    }
    Ok(int8_prompts)
}
