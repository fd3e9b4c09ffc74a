//! The conformance suite's model tests on burn-flex in f16: the device's default float type is
//! f16, as `--dtype f16` sets it, so weights, activations and KV caches are f16 and the flex
//! kernels' f16 paths run (few-row products, the decode attention, RMS norm, SwiGLU's gate).
//! Judged against the same f64 oracle, at the f16 tolerance (docs/backends.md).
//!
//! The tests that concern precision-independent logic (routes, plans, errors, cache memory) and
//! training run in f32 in `conformance.rs`; this binary adds the numerical ones in f16.

use burn::tensor::backend::BackendTypes;
use burn::tensor::{set_default_dtypes, Element, FloatDType};
use burn_flex::{Flex, FlexDevice};

/// Flex's device with f16 as its default float type, set before any tensor is created (a
/// device's defaults can be set once, and every test of this binary shares the device).
fn half_device() -> FlexDevice {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let int = <<Flex as BackendTypes>::IntElem as Element>::dtype();
        set_default_dtypes::<Flex>(&FlexDevice, FloatDType::F16, int)
            .expect("flex computes in f16");
    });
    FlexDevice
}

kv_routing_conformance::conformance_suite!(@properties Flex, half_device(), 50;
    properties::cached_uncached_and_oracle_agree,
);
kv_routing_conformance::conformance_suite!(@tests Flex, half_device();
    oracle_agreement::attention_module_matches_oracle,
    oracle_agreement::model_logits_match_oracle_for_every_route,
    oracle_agreement::model_variants_match_oracle,
    oracle_agreement::padded_batch_matches_oracle,
    cached::cached_prefill_then_decode_matches_uncached,
    cached::token_by_token_from_empty_cache_matches_uncached,
    cached::chunked_prefill_matches_uncached,
    cached::ragged_batch_cached_matches_uncached,
    retarget::retarget_mid_generation_matches_oracle,
    block_weights::block_weight_models_match_the_oracle_on_their_weights,
    block_weights::block_weight_bytes_are_the_blocks,
);
