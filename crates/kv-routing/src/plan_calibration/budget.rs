//! [`PlanBudget`]: how many layers a calibrated plan may cache, said three ways.

use std::fmt;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::cache_plan::CachePlan;
use crate::error::{KvRoutingError, Result};
use crate::routed_transformer::RoutedTransformer;

/// What a calibrated plan must fit in. Every form comes down to a number of cached layers
/// ([`PlanBudget::cached_layers`]), layer 0 included, which the plan meets exactly.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanBudget {
    /// Exactly this many cached layers, `1..=n_layers`.
    CachedLayers(usize),
    /// A share of the layers in `(0, 1]`, counted as [`CachePlan::retention`] counts it:
    /// `max(1, round(share * n_layers))` layers, so a calibrated plan and `retention:F` cache
    /// as many layers.
    Retention(f64),
    /// KV cache bytes per token of one sequence, in the model's float type: the most layers
    /// whose cache fits, by the cache manager's own formula
    /// ([`RoutedTransformer::kv_bytes_per_token`]). Between one layer's bytes and the full
    /// cache's.
    KvBytesPerToken(usize),
}

impl PlanBudget {
    /// The number of cached layers this budget allows on `model`.
    ///
    /// # Errors
    /// [`KvRoutingError::InvalidPlan`] for a budget no plan meets (no layer at all, more
    /// layers or bytes than the full cache has, a share outside `(0, 1]`).
    pub fn cached_layers<B: Backend>(&self, model: &RoutedTransformer<B>) -> Result<usize> {
        let n_layers = model.n_layers();
        let invalid = |why: String| KvRoutingError::InvalidPlan(format!("budget {self}: {why}"));
        match *self {
            PlanBudget::CachedLayers(0) => Err(invalid(
                "a plan caches at least layer 0, so at least one layer".into(),
            )),
            PlanBudget::CachedLayers(layers) if layers > n_layers => {
                Err(invalid(format!("the model has only {n_layers} layers")))
            }
            PlanBudget::CachedLayers(layers) => Ok(layers),
            PlanBudget::Retention(share) => {
                if !(share > 0.0 && share <= 1.0) {
                    return Err(invalid("a retention is a share in (0, 1]".into()));
                }
                Ok(CachePlan::retention(n_layers, share)?.cached_layers().len())
            }
            PlanBudget::KvBytesPerToken(bytes) => {
                let bytes_of = |layers: usize| {
                    model.kv_bytes_per_token(&CachePlan::new(n_layers, 0..layers)?.route())
                };
                let full = bytes_of(n_layers)?;
                if bytes > full {
                    return Err(invalid(format!(
                        "the full cache takes {full} bytes per token; there is nothing to leave out"
                    )));
                }
                let mut layers = n_layers;
                while layers > 0 && bytes_of(layers)? > bytes {
                    layers -= 1;
                }
                if layers == 0 {
                    return Err(invalid(format!(
                        "one cached layer takes {} bytes per token",
                        bytes_of(1)?
                    )));
                }
                Ok(layers)
            }
        }
    }
}

impl fmt::Display for PlanBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanBudget::CachedLayers(layers) => write!(f, "{layers} cached layers"),
            PlanBudget::Retention(share) => write!(f, "retention {share}"),
            PlanBudget::KvBytesPerToken(bytes) => write!(f, "{bytes} KV bytes per token"),
        }
    }
}
