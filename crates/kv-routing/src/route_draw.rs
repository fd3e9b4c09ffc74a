//! [`RouteDraw`]: which distribution a training step's route comes from.
//!
//! The paper draws each layer independently ([`RouteDraw::IndependentLayers`]). A model trained
//! that way sees, at every step, a route that no serving plan produces: at inference a layer
//! outside the cached set reads the *nearest* cached layer at or below it, and every layer
//! between two cached layers reads the same one. The plan draws train on exactly those routes:
//! each step that shares (probability `p`) serves a [`CachePlan`], drawn from a family.
//!
//! # Contract
//! - Every route a plan draw returns is `CachePlan::route()` of a valid plan (layer 0 cached).
//! - The draw is a pure function of the router's seed and the step (see `StochasticRouter`).
//! - `"layers"`, `"every:K"`, `"plans:F"` and `"fixed:layers:0,3,5"` parse to and display from
//!   the four kinds (the `--route-draw` syntax of `kv-routing train`). A fixed plan is checked
//!   against the model's layer count when a router takes it ([`RouteDraw::validate_for`]).

use std::fmt;
use std::str::FromStr;

use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::cache_plan::CachePlan;
use crate::error::{KvRoutingError, Result};

/// The distribution of the routes of the steps that share (probability `p`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RouteDraw {
    /// The paper's: each layer `l >= 1` independently, with probability `p`, reads a layer drawn
    /// uniformly from `0..l`.
    #[default]
    IndependentLayers,
    /// With probability `p` the step serves `every:k`, `k` uniform in `2..=max_k`; otherwise
    /// the full plan.
    EveryKth {
        /// The largest spacing drawn (at least 2).
        max_k: usize,
    },
    /// With probability `p` the step serves a random plan: layer 0 and `m - 1` other layers
    /// chosen uniformly, `m` uniform in `ceil(min_retention * n_layers)..n_layers` (at least
    /// 1); otherwise the full plan. Covers plans no rule produces (calibrated ones, say).
    RandomPlans {
        /// The smallest fraction of layers a drawn plan caches, in `(0, 1)`.
        min_retention: f64,
    },
    /// With probability `p` the step serves this one plan, given by its cached layers (the plan
    /// you will serve: a calibrated one, say, from `kv-routing plan`); otherwise the full plan.
    FixedPlan {
        /// The cached layers, layer 0 first, increasing.
        layers: Vec<usize>,
    },
}

impl RouteDraw {
    /// Checks the parameters of the draw.
    pub fn validate(&self) -> Result<()> {
        match *self {
            RouteDraw::IndependentLayers => Ok(()),
            RouteDraw::EveryKth { max_k } if max_k < 2 => Err(KvRoutingError::InvalidConfig(
                format!("a drawn every:k plan needs max_k >= 2, got {max_k}"),
            )),
            RouteDraw::RandomPlans { min_retention }
                if !(min_retention > 0.0 && min_retention < 1.0) =>
            {
                Err(KvRoutingError::InvalidConfig(format!(
                    "the smallest retention of a drawn plan must be in (0, 1), got {min_retention}"
                )))
            }
            RouteDraw::FixedPlan { ref layers } => {
                let n_layers = layers.iter().max().map_or(1, |&last| last + 1);
                CachePlan::new(n_layers, layers.iter().copied())
                    .map(drop)
                    .map_err(|e| {
                        KvRoutingError::InvalidConfig(format!("a fixed plan to draw: {e}"))
                    })
            }
            _ => Ok(()),
        }
    }

    /// [`RouteDraw::validate`], and for a fixed plan that it fits a model of `n_layers` layers.
    pub fn validate_for(&self, n_layers: usize) -> Result<()> {
        self.validate()?;
        if let RouteDraw::FixedPlan { layers } = self {
            CachePlan::new(n_layers, layers.iter().copied()).map_err(|e| {
                KvRoutingError::InvalidConfig(format!(
                    "the fixed plan {self} does not fit {n_layers} layers: {e}"
                ))
            })?;
        }
        Ok(())
    }

    /// Whether this is a plan draw (every route a serving plan's).
    pub fn draws_plans(&self) -> bool {
        !self.is_independent()
    }

    /// Whether this is the paper's per-layer draw (the default, left out of saved configs).
    pub fn is_independent(&self) -> bool {
        matches!(self, RouteDraw::IndependentLayers)
    }

    /// The plan a sharing step of a plan draw serves, drawn from `rng`; `None` for the
    /// independent draw, which draws per layer instead.
    pub(crate) fn draw_plan(&self, n_layers: usize, rng: &mut ChaCha8Rng) -> Option<CachePlan> {
        // u32 draws keep the stream identical on 32- and 64-bit targets.
        let cached: Vec<usize> = match *self {
            RouteDraw::FixedPlan { ref layers } => layers.clone(),
            RouteDraw::IndependentLayers => return None,
            RouteDraw::EveryKth { max_k } => {
                let k = rng.random_range(2..=max_k.min(u32::MAX as usize) as u32) as usize;
                (0..n_layers).step_by(k).collect()
            }
            RouteDraw::RandomPlans { min_retention } => {
                let most = n_layers.saturating_sub(1).max(1);
                let least = ((min_retention * n_layers as f64).ceil() as usize).clamp(1, most);
                let m = rng.random_range(least as u32..=most as u32) as usize;
                // A partial Fisher-Yates shuffle of layers 1.. picks the other m - 1.
                let mut others: Vec<usize> = (1..n_layers).collect();
                for i in 0..m - 1 {
                    let j = rng.random_range(i as u32..others.len() as u32) as usize;
                    others.swap(i, j);
                }
                std::iter::once(0)
                    .chain(others[..m - 1].iter().copied())
                    .collect()
            }
        };
        Some(
            CachePlan::new(n_layers, cached).expect("drawn plans hold layer 0 and distinct layers"),
        )
    }
}

impl fmt::Display for RouteDraw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteDraw::IndependentLayers => write!(f, "layers"),
            RouteDraw::EveryKth { max_k } => write!(f, "every:{max_k}"),
            RouteDraw::RandomPlans { min_retention } => write!(f, "plans:{min_retention}"),
            RouteDraw::FixedPlan { layers } => {
                let layers: Vec<String> = layers.iter().map(usize::to_string).collect();
                write!(f, "fixed:layers:{}", layers.join(","))
            }
        }
    }
}

impl FromStr for RouteDraw {
    type Err = KvRoutingError;

    /// `layers` (the paper's), `every:K` (every:k plans, `k` in `2..=K`), `plans:F` (random
    /// plans caching at least the fraction `F` of the layers) or `fixed:layers:0,3,5` (one plan).
    fn from_str(text: &str) -> Result<Self> {
        let bad = || {
            KvRoutingError::InvalidConfig(format!(
                "route draw {text:?}: expected `layers`, `every:K` (K >= 2), `plans:F` (0 < F < 1) \
                 or `fixed:layers:0,3,5` (layer 0 and increasing layers)"
            ))
        };
        let draw = match text.split_once(':') {
            None if text == "layers" => RouteDraw::IndependentLayers,
            Some(("every", k)) => RouteDraw::EveryKth {
                max_k: k.parse().map_err(|_| bad())?,
            },
            Some(("plans", f)) => RouteDraw::RandomPlans {
                min_retention: f.parse().map_err(|_| bad())?,
            },
            Some(("fixed", plan)) if plan.starts_with("layers:") => {
                // The plans' own parser; the layer count is the model's, unknown here (checked
                // by `validate_for`), so any count holds the listed layers.
                let plan = CachePlan::parse(plan, usize::MAX).map_err(|_| bad())?;
                RouteDraw::FixedPlan {
                    layers: plan.cached_layers().to_vec(),
                }
            }
            _ => return Err(bad()),
        };
        draw.validate()?;
        Ok(draw)
    }
}

#[cfg(test)]
mod tests {
    use super::RouteDraw;

    #[test]
    fn the_cli_syntax_round_trips_and_refuses_what_it_cannot_draw() {
        for text in ["layers", "every:4", "plans:0.25", "fixed:layers:0,3,5"] {
            assert_eq!(text.parse::<RouteDraw>().unwrap().to_string(), text);
        }
        for text in [
            "",
            "every",
            "every:1",
            "every:x",
            "plans:0",
            "plans:1",
            "plans:nan",
            "all",
            "fixed:every:2",
            "fixed:layers:",
            "fixed:layers:1,3",
            "fixed:layers:0,3,3",
            "fixed:layers:0,x",
        ] {
            assert!(text.parse::<RouteDraw>().is_err(), "{text:?}");
        }
        let fixed: RouteDraw = "fixed:layers:0,3,5".parse().unwrap();
        assert!(fixed.validate_for(6).is_ok());
        assert!(fixed.validate_for(5).is_err(), "layer 5 of a 5-layer model");
    }
}
