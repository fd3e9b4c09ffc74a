//! Training under a route: gradients reach the K/V projections of source layers only.

use burn::tensor::backend::Backend;
use burn_autodiff::Autodiff;
use kv_routing::Route;

use crate::support::{random_tokens, tiny_config, tiny_model, to_host};

/// Under `src = [0, 0, 1, 3, 3, 0]` (sources 0, 1, 3) the K/V projections of layers 2, 4, 5
/// get no gradient at all (they were never computed), those of the sources get non-zero ones,
/// and every layer's query projection gets one.
pub fn gradients_reach_only_source_kv_projections<B: Backend>(device: &B::Device) {
    let config = tiny_config(2);
    let model = tiny_model::<Autodiff<B>>(&config, device);
    let route = Route::new(vec![0, 0, 1, 3, 3, 0]).unwrap();
    let tokens = vec![random_tokens(1, 9, 37), random_tokens(2, 9, 37)];
    let logits = model.forward_tokens(&tokens, &route).unwrap();
    let weights = logits.random_like(burn::tensor::Distribution::Normal(0.0, 1.0));
    let gradients = (logits * weights.detach()).sum().backward();
    let nonzero = |values: Vec<f64>| values.iter().any(|v| v.abs() > 0.0);
    for (layer, block) in model.blocks.iter().enumerate() {
        let attention = &block.attention;
        let key = attention.key.weight.grad(&gradients);
        let value = attention.value.weight.grad(&gradients);
        if route.is_source(layer) {
            assert!(
                key.map(to_host).is_some_and(nonzero),
                "layer {layer} key grad"
            );
            assert!(
                value.map(to_host).is_some_and(nonzero),
                "layer {layer} value grad"
            );
        } else {
            assert!(key.is_none(), "non-source layer {layer} got a key gradient");
            assert!(
                value.is_none(),
                "non-source layer {layer} got a value gradient"
            );
        }
        let query = attention.query.weight.grad(&gradients);
        assert!(
            query.map(to_host).is_some_and(nonzero),
            "layer {layer} query grad"
        );
    }
}
