//! Inference plans: which layers keep a KV cache.
//!
//! A plan is a set `S` of cached layers with `0 ∈ S`. It induces the route
//! `src[l] = max{ j ∈ S : j <= l }`: a layer outside `S` reads the nearest cached layer at or
//! below it and skips its own K/V projections.

use serde::{Deserialize, Serialize};

use crate::error::{KvRoutingError, Result};
use crate::route::Route;

/// A validated set of cached layers for a model of `n_layers` layers.
///
/// Serializes as `{"n_layers": 8, "cached": [0, 2, 4, 6]}`; deserialization validates like
/// [`CachePlan::new`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "CachePlanRepr", into = "CachePlanRepr")]
pub struct CachePlan {
    n_layers: usize,
    cached: Vec<usize>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CachePlanRepr {
    n_layers: usize,
    cached: Vec<usize>,
}

impl TryFrom<CachePlanRepr> for CachePlan {
    type Error = KvRoutingError;

    fn try_from(repr: CachePlanRepr) -> Result<Self> {
        CachePlan::new(repr.n_layers, repr.cached)
    }
}

impl From<CachePlan> for CachePlanRepr {
    fn from(plan: CachePlan) -> Self {
        CachePlanRepr {
            n_layers: plan.n_layers,
            cached: plan.cached,
        }
    }
}

impl CachePlan {
    /// A plan caching exactly `layers` (any order, no duplicates, layer 0 included).
    pub fn new(n_layers: usize, layers: impl IntoIterator<Item = usize>) -> Result<Self> {
        if n_layers == 0 {
            return Err(KvRoutingError::InvalidPlan(
                "a plan needs at least one layer".into(),
            ));
        }
        let mut cached: Vec<usize> = layers.into_iter().collect();
        if cached.is_empty() {
            return Err(KvRoutingError::InvalidPlan(
                "the set of cached layers is empty; layer 0 must always be cached".into(),
            ));
        }
        cached.sort_unstable();
        if let Some(&layer) = cached.iter().find(|&&l| l >= n_layers) {
            return Err(KvRoutingError::InvalidPlan(format!(
                "layer {layer} does not exist in a model of {n_layers} layers"
            )));
        }
        if let Some(pair) = cached.windows(2).find(|w| w[0] == w[1]) {
            return Err(KvRoutingError::InvalidPlan(format!(
                "layer {} is listed twice",
                pair[0]
            )));
        }
        if cached[0] != 0 {
            return Err(KvRoutingError::InvalidPlan(format!(
                "layer 0 must always be cached (got {cached:?})"
            )));
        }
        Ok(Self { n_layers, cached })
    }

    /// Every layer cached: the standard transformer.
    pub fn full(n_layers: usize) -> Result<Self> {
        Self::new(n_layers, 0..n_layers)
    }

    /// Layers `0, k, 2k, ...` cached: `k = 2, 3, 4` keep 50/33/25% of the layers.
    pub fn every_kth(n_layers: usize, k: usize) -> Result<Self> {
        if k == 0 {
            return Err(KvRoutingError::InvalidPlan("every_kth needs k >= 1".into()));
        }
        Self::new(n_layers, (0..n_layers).step_by(k))
    }

    /// About `fraction` of the layers cached, evenly spaced from layer 0:
    /// `m = max(1, round(fraction * n_layers))` layers at `floor(i * n_layers / m)`, `i < m`.
    ///
    /// For fractions 1/k with `k` dividing `n_layers` this equals [`CachePlan::every_kth`].
    pub fn retention(n_layers: usize, fraction: f64) -> Result<Self> {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(KvRoutingError::InvalidPlan(format!(
                "retention fraction must be in (0, 1], got {fraction}"
            )));
        }
        let m = ((fraction * n_layers as f64).round() as usize).clamp(1, n_layers.max(1));
        Self::new(n_layers, (0..m).map(|i| i * n_layers / m))
    }

    /// Number of layers in the model this plan is for.
    pub fn n_layers(&self) -> usize {
        self.n_layers
    }

    /// The cached layers, ascending.
    pub fn cached_layers(&self) -> &[usize] {
        &self.cached
    }

    /// Fraction of layers that keep a cache, `|S| / L`.
    pub fn retention_fraction(&self) -> f64 {
        self.cached.len() as f64 / self.n_layers as f64
    }

    /// The route this plan induces: `src[l] = max{ j ∈ S : j <= l }`.
    pub fn route(&self) -> Route {
        let mut src = Vec::with_capacity(self.n_layers);
        let mut current = 0;
        for layer in 0..self.n_layers {
            if self.cached.binary_search(&layer).is_ok() {
                current = layer;
            }
            src.push(current);
        }
        Route::new(src).expect("a valid plan always induces a valid route")
    }

    /// JSON form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a plan always serializes")
    }

    /// Parses and validates the JSON form.
    pub fn from_json(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|e| KvRoutingError::Serde(e.to_string()))
    }
}

impl From<&CachePlan> for Route {
    fn from(plan: &CachePlan) -> Self {
        plan.route()
    }
}
