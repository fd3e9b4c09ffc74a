//! Retargeting a live cache to a smaller set of cached layers mid-generation.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use kv_routing::{CachePlan, KvRoutingError, Route};

use super::cached::{chunk_steps, feed_cached};
use crate::oracle::OracleModel;
use crate::support::{assert_close, random_tokens, tiny_config, tiny_model, tolerance};

/// Full cache for the prompt and two tokens, then every-2nd for four tokens, then every-4th:
/// each retarget frees the dropped layers at once, and every logit matches the oracle run with
/// the route each position was processed under.
pub fn retarget_mid_generation_matches_oracle<B: Backend>(device: &B::Device) {
    let config = tiny_config(2);
    let model = tiny_model::<B>(&config, device);
    let oracle = OracleModel::from_model(&model, &config);
    let tolerance = tolerance::<B>(device);
    let element = Tensor::<B, 1>::zeros([1], device).dtype().size();
    let layer_bytes = 2 * 2 * 2 * 16 * 8 * element;
    let plans = [
        CachePlan::full(6).unwrap(),
        CachePlan::every_kth(6, 2).unwrap(),
        CachePlan::every_kth(6, 4).unwrap(),
    ];
    // Positions 0..8 under plan 0, 8..12 under plan 1, 12..15 under plan 2.
    let route_at = |p: usize| {
        plans[if p < 8 {
            0
        } else if p < 12 {
            1
        } else {
            2
        }]
        .route()
    };
    let sequences = vec![random_tokens(7, 15, 37), random_tokens(8, 15, 37)];
    let steps = chunk_steps(&sequences, &[6, 1, 1, 1, 1, 1, 1, 1, 1, 1]);

    let mut cache = model.new_cache(2, 16, plans[0].route()).unwrap();
    let mut rows = feed_cached(&model, &mut cache, &steps[..3]);
    assert_eq!(cache.bytes(), 6 * layer_bytes);
    for (plan, range) in [(&plans[1], 3..7), (&plans[2], 7..10)] {
        cache.retarget(plan.route()).unwrap();
        assert_eq!(cache.cached_layers(), plan.cached_layers());
        assert_eq!(cache.bytes(), plan.cached_layers().len() * layer_bytes);
        let more = feed_cached(&model, &mut cache, &steps[range]);
        for (all, new) in rows.iter_mut().zip(more) {
            all.extend(new);
        }
    }
    for (b, tokens) in sequences.iter().enumerate() {
        let expected = oracle.logits_per_position(tokens, route_at);
        for (p, row) in expected.iter().enumerate() {
            assert_close(
                &rows[b][p],
                row,
                tolerance,
                &format!("retargeted cache, sequence {b}, position {p}"),
            );
        }
    }
}

/// A retarget that needs a layer that is not cached (or has the wrong length) fails, naming the
/// layer, and leaves the cache usable and unchanged.
pub fn retarget_to_uncached_layer_fails_and_changes_nothing<B: Backend>(device: &B::Device) {
    let config = tiny_config(2);
    let model = tiny_model::<B>(&config, device);
    let oracle = OracleModel::from_model(&model, &config);
    let every_2nd = CachePlan::every_kth(6, 2).unwrap().route();
    let tokens = random_tokens(9, 8, 37);
    let mut cache = model.new_cache(1, 8, every_2nd.clone()).unwrap();
    let mut rows = feed_cached(
        &model,
        &mut cache,
        &chunk_steps(std::slice::from_ref(&tokens), &[5]),
    );
    let bytes = cache.bytes();

    let needs_layer_3 = CachePlan::new(6, [0, 3]).unwrap().route();
    match cache.retarget(needs_layer_3) {
        Err(KvRoutingError::MissingKv { layer: 3, reason }) => {
            assert!(reason.contains("not cached"), "{reason}")
        }
        other => panic!("expected a missing-layer error, got {other:?}"),
    }
    assert!(matches!(
        cache.retarget(Route::identity(5).unwrap()),
        Err(KvRoutingError::LayerCountMismatch {
            route_layers: 5,
            model_layers: 6
        })
    ));
    assert_eq!(cache.route(), &every_2nd);
    assert_eq!(cache.bytes(), bytes);
    let steps = chunk_steps(&[tokens[5..].to_vec()], &[1, 1, 1]);
    rows[0].extend(feed_cached(&model, &mut cache, &steps).remove(0));
    for (p, row) in oracle.logits(&tokens, &every_2nd).iter().enumerate() {
        assert_close(
            &rows[0][p],
            row,
            tolerance::<B>(device),
            &format!("after failed retarget, position {p}"),
        );
    }
}
