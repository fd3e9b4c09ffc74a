//! Same seed, same routes, same logits on every backend compiled into one process.
//!
//! A [`Fingerprint`] records what one backend produces from fixed seeds: the routes drawn by the
//! training router, full-sequence logits under each, and cached logits (prefill + decode) under
//! each. Weights are drawn on the host (`init_seeded`), so every backend starts from the same
//! model; routes are drawn on the host, so they must be identical, and logits must agree within
//! the f32 tolerance.

use burn::tensor::backend::Backend;
use kv_routing::{CachePlan, Route, StochasticRouter};

use crate::suite::cached::{chunk_steps, feed_cached};
use crate::support::{
    assert_close, logits_to_host, random_tokens, tiny_config, tiny_model, Tolerance,
};

/// What one backend produced.
#[derive(Debug, Clone)]
pub struct Fingerprint {
    /// Backend name, for messages.
    pub backend: String,
    /// Routes: four drawn by `StochasticRouter::new(6, 0.5, 2026)`, then the every-2nd plan.
    pub routes: Vec<Route>,
    /// Flattened full-sequence logits of a batch of two, per route.
    pub logits: Vec<Vec<f64>>,
    /// Flattened cached logits (prefill 5, decode 4) of the same batch, per route.
    pub cached_logits: Vec<Vec<f64>>,
}

/// Runs the fixed workload on `B`.
pub fn fingerprint<B: Backend>(backend: &str, device: &B::Device) -> Fingerprint {
    let config = tiny_config(2);
    let model = tiny_model::<B>(&config, device);
    let mut router = StochasticRouter::new(config.n_layers, 0.5, 2026).unwrap();
    let mut routes: Vec<Route> = (0..4).map(|_| router.next_route()).collect();
    routes.push(CachePlan::every_kth(config.n_layers, 2).unwrap().route());
    let batch = vec![random_tokens(1, 9, 37), random_tokens(2, 9, 37)];
    let flatten = |rows: Vec<Vec<Vec<f64>>>| rows.into_iter().flatten().flatten().collect();
    let logits = routes
        .iter()
        .map(|route| flatten(logits_to_host(model.forward_tokens(&batch, route).unwrap())))
        .collect();
    let cached_logits = routes
        .iter()
        .map(|route| {
            let mut cache = model.new_cache(2, 9, route.clone()).unwrap();
            flatten(feed_cached(
                &model,
                &mut cache,
                &chunk_steps(&batch, &[5, 1, 1, 1, 1]),
            ))
        })
        .collect();
    Fingerprint {
        backend: backend.to_string(),
        routes,
        logits,
        cached_logits,
    }
}

/// Asserts `other` drew the same routes as `reference` and produced the same logits within
/// `tolerance`.
pub fn assert_same(reference: &Fingerprint, other: &Fingerprint, tolerance: Tolerance) {
    assert_eq!(
        reference.routes, other.routes,
        "routes differ between {} and {}",
        reference.backend, other.backend
    );
    for (i, route) in reference.routes.iter().enumerate() {
        let context = |what: &str| {
            format!(
                "{what} under route {route}: {} vs {}",
                other.backend, reference.backend
            )
        };
        assert_close(
            &other.logits[i],
            &reference.logits[i],
            tolerance,
            &context("logits"),
        );
        assert_close(
            &other.cached_logits[i],
            &reference.cached_logits[i],
            tolerance,
            &context("cached logits"),
        );
    }
}
