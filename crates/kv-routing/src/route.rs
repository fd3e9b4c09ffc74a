//! Routes: which layer's keys/values each layer attends to.
//!
//! A route over `L` layers is `src: [usize; L]` with `src[0] == 0` and `src[l] <= l`. Layer `l`
//! attends with its own queries to the keys/values that layer `src[l]` computes from its own input
//! with its own K/V projections. The *sources* of a route are the distinct values of `src`; only
//! sources compute (and, when generating, cache) keys/values. See `docs/routing.md`.

use serde::{Deserialize, Serialize};

use crate::error::{KvRoutingError, Result};

/// A validated route: `src[l]` is the layer whose keys/values layer `l` attends to.
///
/// Serializes as `{"src": [0, 0, 2, 2]}`; deserialization validates like [`Route::new`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RouteRepr", into = "RouteRepr")]
pub struct Route {
    src: Vec<usize>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteRepr {
    src: Vec<usize>,
}

impl TryFrom<RouteRepr> for Route {
    type Error = KvRoutingError;

    fn try_from(repr: RouteRepr) -> Result<Self> {
        Route::new(repr.src)
    }
}

impl From<Route> for RouteRepr {
    fn from(route: Route) -> Self {
        RouteRepr { src: route.src }
    }
}

impl Route {
    /// Builds a route from `src`, checking `src` is non-empty, `src[0] == 0` and `src[l] <= l`.
    pub fn new(src: Vec<usize>) -> Result<Self> {
        if src.is_empty() {
            return Err(KvRoutingError::InvalidRoute(
                "a route needs at least one layer".into(),
            ));
        }
        if src[0] != 0 {
            return Err(KvRoutingError::InvalidRoute(format!(
                "layer 0 must use its own keys/values (src[0] = 0), got src[0] = {}",
                src[0]
            )));
        }
        if let Some((layer, &s)) = src.iter().enumerate().find(|(l, &s)| s > *l) {
            return Err(KvRoutingError::InvalidRoute(format!(
                "layer {layer} cannot read layer {s}: a layer may only read itself or an earlier layer (src[{layer}] <= {layer})"
            )));
        }
        Ok(Self { src })
    }

    /// The route of a standard transformer: every layer uses its own keys/values.
    pub fn identity(n_layers: usize) -> Result<Self> {
        Self::new((0..n_layers).collect())
    }

    /// Number of layers the route covers.
    pub fn n_layers(&self) -> usize {
        self.src.len()
    }

    /// `src` for every layer.
    pub fn src(&self) -> &[usize] {
        &self.src
    }

    /// The layer whose keys/values `layer` attends to.
    ///
    /// # Panics
    /// If `layer >= n_layers()`.
    pub fn source_of(&self, layer: usize) -> usize {
        self.src[layer]
    }

    /// Whether `layer` computes keys/values under this route (some layer reads them).
    pub fn is_source(&self, layer: usize) -> bool {
        self.src.contains(&layer)
    }

    /// Whether some layer reads another layer's keys/values (what turns on the sharing
    /// adapters, [`crate::sharing_adapter`]).
    pub fn shares(&self) -> bool {
        self.src
            .iter()
            .enumerate()
            .any(|(layer, &source)| layer != source)
    }

    /// The distinct source layers, ascending. Layer 0 is always one.
    pub fn sources(&self) -> Vec<usize> {
        (0..self.n_layers())
            .filter(|&l| self.is_source(l))
            .collect()
    }

    /// The last layer that reads `source`'s keys/values, if any: after it runs they can be freed.
    pub fn last_reader(&self, source: usize) -> Option<usize> {
        self.src.iter().rposition(|&s| s == source)
    }

    /// Fails unless the route covers exactly `n_layers` layers.
    pub fn check_layers(&self, n_layers: usize) -> Result<()> {
        if self.n_layers() == n_layers {
            Ok(())
        } else {
            Err(KvRoutingError::LayerCountMismatch {
                route_layers: self.n_layers(),
                model_layers: n_layers,
            })
        }
    }

    /// JSON form, `{"src":[...]}`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a route always serializes")
    }

    /// Parses and validates the JSON form.
    pub fn from_json(json: &str) -> Result<Self> {
        serde_json::from_str(json).map_err(|e| KvRoutingError::Serde(e.to_string()))
    }
}

impl core::fmt::Display for Route {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:?}", self.src)
    }
}
