//! The conformance suite of `kv-routing`, written once and instantiated for every backend.
//!
//! Each test is a generic function in [`suite`]; [`conformance_suite!`] turns all of them into
//! `#[test]`s for one backend type and device. Results are judged against [`oracle`], a plain
//! scalar f64 implementation of the routed transformer that shares no code with the library.
//!
//! ```ignore
//! // backends/<name>/tests/conformance.rs
//! kv_routing_conformance::conformance_suite!(burn_ndarray::NdArray<f32>, burn_ndarray::NdArrayDevice::Cpu);
//! ```

#![forbid(unsafe_code)]

pub mod cross_backend;
pub mod oracle;
pub mod suite;
pub mod support;

/// Instantiates every conformance test for `$backend` on the device `$device` (an expression
/// evaluated once per test). The property tests run 1000 random cases each unless
/// `property_cases = N` says otherwise (a slow backend), or `KV_PROPERTY_CASES` at run time.
///
/// A backend whose device may be missing on the machine (wgpu without a driver) passes
/// `device_or_skip = EXPR` instead, `EXPR` an `Option` of the device evaluated first in every
/// test: `None` makes the test return at once. Saying that tests were skipped, and refusing to
/// skip where the device is required, is `EXPR`'s job (see
/// `backends/wgpu/tests/conformance/support.rs`).
///
/// ```ignore
/// kv_routing_conformance::conformance_suite!(
///     kv_routing_wgpu::Backend,
///     device_or_skip = support::device_or_skip(),
///     property_cases = 2
/// );
/// ```
#[macro_export]
macro_rules! conformance_suite {
    // First: `device_or_skip = EXPR` also parses as the `$device:expr` of the arms below (an
    // assignment expression). The device expression it hands on returns from the test.
    ($backend:ty, device_or_skip = $device:expr, property_cases = $cases:expr) => {
        $crate::conformance_suite!(
            $backend,
            match $device {
                ::core::option::Option::Some(device) => device,
                ::core::option::Option::None => return,
            },
            property_cases = $cases
        );
    };
    ($backend:ty, $device:expr) => {
        $crate::conformance_suite!($backend, $device, property_cases = 1000);
    };
    ($backend:ty, $device:expr, property_cases = $cases:expr) => {
        $crate::conformance_suite!(@properties $backend, $device, $cases;
            properties::cached_uncached_and_oracle_agree,
            properties::resumed_routers_replay_the_routes,
            properties::retargets_mid_generation_match_the_oracle,
        );
        $crate::conformance_suite!(@tests $backend, $device;
            routes::golden_routes_for_two_seeds,
            routes::router_probability_extremes_and_rate,
            routes::router_state_round_trips,
            routes::plan_draws_are_serving_plans_reproducibly,
            routes::invalid_routes_plans_and_probabilities_are_rejected,
            routes::plans_induce_nearest_cached_layer_below,
            oracle_agreement::attention_module_matches_oracle,
            oracle_agreement::model_logits_match_oracle_for_every_route,
            oracle_agreement::model_variants_match_oracle,
            oracle_agreement::padded_batch_matches_oracle,
            oracle_agreement::routes_change_the_logits,
            cached::cached_prefill_then_decode_matches_uncached,
            cached::token_by_token_from_empty_cache_matches_uncached,
            cached::chunked_prefill_matches_uncached,
            cached::ragged_batch_cached_matches_uncached,
            cached::greedy_generation_matches_uncached_argmax,
            sampling::greedy_tokens_match_the_host_argmax,
            sampling::top_k_skips_finished_rows_without_drawing,
            cache_memory::cache_holds_exactly_the_sources,
            cache_memory::views_kept_past_a_step_are_counted,
            cache_memory::memory_budgets_refuse_before_allocating,
            kv_dtypes::int8_rows_round_trip_within_their_bound,
            kv_dtypes::int8_cache_matches_the_oracle_on_its_stored_values,
            kv_dtypes::cache_bytes_follow_the_kv_dtype,
            block_weights::block_weight_models_match_the_oracle_on_their_weights,
            block_weights::block_weight_bytes_are_the_blocks,
            mixed_plans::mixed_plan_batches_match_each_sequence_alone,
            mixed_plans::retargeting_one_sequence_matches_the_oracle,
            serving::serving_admits_by_exact_bytes_and_matches_each_request_alone,
            retarget::retarget_mid_generation_matches_oracle,
            calibration::forward_from_a_layer_matches_the_oracle,
            calibration::calibration_drops_a_duplicate_and_keeps_an_essential_layer,
            calibration::calibration_budgets_are_met_exactly_or_refused,
            retarget::retarget_to_uncached_layer_fails_and_changes_nothing,
            errors::failed_cache_steps_change_nothing,
            errors::bad_model_inputs_are_typed_errors,
            errors::device_ids_are_not_read_back,
            errors::attention_rejects_mismatched_shapes,
            gradients::gradients_reach_only_source_kv_projections,
            gradients::training_gradients_match_oracle_finite_differences,
            sharing_adapters::sharing_adapters_change_only_sharing_plans,
            sharing_adapters::only_sharing_adapters_get_gradients,
        );
    };
    (@properties $backend:ty, $device:expr, $cases:expr;
        $($module:ident :: $name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let device = $device;
                $crate::suite::$module::$name::<$backend>(&device, $cases);
            }
        )*
    };
    (@tests $backend:ty, $device:expr; $($module:ident :: $name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let device = $device;
                $crate::suite::$module::$name::<$backend>(&device);
            }
        )*
    };
}
