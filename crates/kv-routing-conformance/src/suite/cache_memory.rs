//! What the cache holds: exactly the route's source layers, at exactly the formula's bytes.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use kv_routing::{CachePlan, GenerationConfig};

use super::cached::{chunk_steps, feed_cached};
use super::oracle_agreement::route_kinds;
use crate::support::{random_tokens, tiny_config, tiny_model};

/// For every route kind the cache stores the sources and nothing else, and its byte count is
/// `|sources| * 2 * batch * n_kv_heads * capacity * head_dim * bytes_per_element`, before and
/// after appending. A full plan gives a complete cache.
pub fn cache_holds_exactly_the_sources<B: Backend>(device: &B::Device) {
    let config = tiny_config(2);
    let model = tiny_model::<B>(&config, device);
    let element = Tensor::<B, 1>::zeros([1], device).dtype().size();
    let (batch, capacity) = (3, 20);
    let per_layer = 2 * batch * 2 * capacity * 8 * element;
    for (name, route) in route_kinds(config.n_layers) {
        let mut cache = model.new_cache(batch, capacity, route.clone()).unwrap();
        let sources = route.sources();
        assert_eq!(cache.cached_layers(), sources, "{name}");
        let expected: Vec<usize> = (0..config.n_layers)
            .map(|l| if route.is_source(l) { per_layer } else { 0 })
            .collect();
        assert_eq!(cache.bytes_per_layer(), expected, "{name}");
        assert_eq!(cache.bytes(), sources.len() * per_layer, "{name}");
        let sequences = vec![random_tokens(1, 7, 37); batch];
        feed_cached(&model, &mut cache, &chunk_steps(&sequences, &[4, 1, 1, 1]));
        assert_eq!(
            cache.bytes(),
            sources.len() * per_layer,
            "{name} after appending"
        );
        assert_eq!(cache.len(), 7);
    }
    let full = model
        .new_cache(
            batch,
            capacity,
            CachePlan::full(config.n_layers).unwrap().route(),
        )
        .unwrap();
    assert_eq!(
        full.cached_layers(),
        (0..config.n_layers).collect::<Vec<_>>()
    );
    assert!(full.bytes_per_layer().iter().all(|&b| b == per_layer));

    let quarter = CachePlan::every_kth(config.n_layers, 4).unwrap().route();
    let generation = model
        .generate(
            &[random_tokens(2, 4, 37)],
            &quarter,
            &GenerationConfig {
                max_new_tokens: 3,
                ..Default::default()
            },
        )
        .unwrap();
    let one_sequence_layer = 2 * 2 * (4 + 3) * 8 * element;
    assert_eq!(
        generation.kv_bytes(),
        2 * one_sequence_layer,
        "generate reports its cache"
    );
}
