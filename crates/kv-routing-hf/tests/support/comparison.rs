//! Comparing a loaded model with the f64 reference: the token sequence and routes every
//! checkpoint test uses, the model's logits on the host, and a tolerance check that names the
//! first logit out of it.

use burn::tensor::backend::Backend;
use kv_routing::{CachePlan, Route, RoutedTransformer, StochasticRouter};

/// The prompt every checkpoint is checked on.
pub fn tokens() -> Vec<u32> {
    vec![3, 17, 5, 40, 0, 22, 9, 9, 31, 12, 1, 38]
}

/// Routes to check: full, every other layer cached, a training route sampled from `seed`.
pub fn routes(n_layers: usize, seed: u64) -> Vec<Route> {
    vec![
        CachePlan::full(n_layers).unwrap().route(),
        CachePlan::every_kth(n_layers, 2).unwrap().route(),
        StochasticRouter::new(n_layers, 1.0, seed)
            .unwrap()
            .route_for_step(0),
    ]
}

/// The KV source of every layer under `route`, as the reference takes it.
pub fn sources(route: &Route, n_layers: usize) -> Vec<usize> {
    (0..n_layers).map(|l| route.source_of(l)).collect()
}

/// Logits of one sequence, one row per position.
pub fn host_logits<B: Backend>(
    model: &RoutedTransformer<B>,
    tokens: &[u32],
    route: &Route,
) -> Vec<Vec<f64>> {
    let logits = model.forward_tokens(&[tokens.to_vec()], route).unwrap();
    let [_, seq, vocab] = logits.dims();
    let values: Vec<f64> = logits.into_data().iter::<f64>().collect();
    (0..seq)
        .map(|p| values[p * vocab..(p + 1) * vocab].to_vec())
        .collect()
}

/// Every logit within `tolerance` (relative, with an absolute floor of `tolerance`).
pub fn assert_close(actual: &[Vec<f64>], expected: &[Vec<f64>], tolerance: f64, context: &str) {
    assert_eq!(actual.len(), expected.len(), "{context}: positions");
    for (p, (a_row, e_row)) in actual.iter().zip(expected).enumerate() {
        assert_eq!(
            a_row.len(),
            e_row.len(),
            "{context}: vocabulary at position {p}"
        );
        for (i, (a, e)) in a_row.iter().zip(e_row).enumerate() {
            assert!(
                (a - e).abs() <= tolerance * (1.0 + e.abs()),
                "{context}: position {p}, logit {i}: {a} vs reference {e}"
            );
        }
    }
}
