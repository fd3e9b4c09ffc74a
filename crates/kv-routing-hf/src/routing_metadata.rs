//! [`RoutingMetadata`]: the `kv_routing` block of an exported `config.json`.
//!
//! `transformers` ignores unknown config keys, so the block travels with the checkpoint through
//! the Python ecosystem and back: how the weights were trained (routing probability, steps) and
//! which layers to cache when serving them.

use kv_routing::CachePlan;
use serde::{Deserialize, Serialize};

use crate::error::{HfError, Result};

/// Version of the block's layout.
pub const ROUTING_METADATA_VERSION: u32 = 1;

/// Routing configuration stored under `kv_routing` in `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingMetadata {
    /// Layout version ([`ROUTING_METADATA_VERSION`]).
    pub version: u32,
    /// Routing probability of the last training run (0: never trained with routing, so only
    /// the full cache is safe).
    pub routing_p: f64,
    /// Steps of that run.
    pub routed_steps: u64,
    /// Seed of that run's route stream.
    pub route_seed: u64,
    /// Cached layers of the plan to serve with (ascending, layer 0 first); `None`: full cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serve_cached_layers: Option<Vec<usize>>,
}

impl RoutingMetadata {
    /// The serving plan for a model of `n_layers` layers (full when none is stored).
    pub fn serve_plan(&self, n_layers: usize) -> Result<CachePlan> {
        if self.version != ROUTING_METADATA_VERSION {
            return Err(HfError::Unsupported(format!(
                "kv_routing.version {} (this build reads {ROUTING_METADATA_VERSION})",
                self.version
            )));
        }
        let plan = match &self.serve_cached_layers {
            Some(layers) => CachePlan::new(n_layers, layers.iter().copied()),
            None => CachePlan::full(n_layers),
        };
        Ok(plan?)
    }
}
