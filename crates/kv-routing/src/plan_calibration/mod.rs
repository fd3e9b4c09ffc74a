//! Plan calibration: which layers to cache under a memory budget, chosen on the user's own
//! text rather than by a rule (`every:K`, `retention:F`).
//!
//! A routed model serves any plan, so the plan can be chosen per deployment. How many layers
//! are cached sets the memory; *which* ones sets the damage, and the damage of two plans of the
//! same size can differ by orders of magnitude (docs/results.md). Calibration runs the model on
//! a few calibration sequences under candidate plans and keeps the one that changes its
//! predictions least.
//!
//! # What is measured
//! [`CalibrationMeasure::FullCacheKl`] (default): the mean over calibration tokens of
//! `KL(full-cache next-token distribution ‖ the plan's)`, the damage a plan does to the model the
//! user has; it needs no labels and sees every token's whole distribution.
//! [`CalibrationMeasure::CrossEntropy`]: the plan's mean next-token cross-entropy on the
//! calibration text.
//!
//! # How plans are searched
//! [`PlanSearch::Beam`] (width 1 = greedy, the default): start from the full cache and remove
//! one layer at a time, keeping the `width` least-damaged plans of each size, until the budget
//! is met. [`PlanSearch::OneShot`]: score each layer's removal from the full cache once and
//! remove the least damaging ones together (one forward pass per layer, but blind to how
//! removals interact). docs/routing.md compares them on SmolLM2.
//!
//! # Work reused
//! - The full cache's logits are computed once and kept (`tokens * vocab_size` floats).
//! - Removing cached layer `c` from a plan changes nothing below `c`: each parent plan is run
//!   once with every block's input recorded ([`RoutedTransformer::forward_recorded`]), and each
//!   of its children reruns only the blocks from `c` up
//!   ([`RoutedTransformer::forward_from`]). [`PlanCalibration::blocks_run`] counts the cost.
//!
//! # Contract
//! - The returned plan caches layer 0 and exactly [`PlanBudget::cached_layers`] layers; its KV
//!   bytes per token are the cache manager's figure for it (so within a bytes budget).
//! - Its damage on the calibration text is at most that of the rule-based plans of the same
//!   size (`retention:F`, and `every:K` where it caches as many layers), which are always
//!   scored too.
//! - The result depends only on the model, the *set* of calibration sequences and the config:
//!   sequences are put in a canonical order before anything runs, damages are summed in f64 in
//!   that order, and ties go to the plan keeping lower layers (the smaller list).
//! - Sequences are `n + 1` tokens each (inputs and the next token), all of one length, `n` within
//!   the model's context; anything else is a typed error before anything runs.

mod budget;
mod search;

use std::fmt;
use std::str::FromStr;

use burn::config::Config;
use serde::{Deserialize, Serialize};

pub use budget::PlanBudget;

use crate::cache_plan::CachePlan;
use crate::error::KvRoutingError;

/// How the damage of a plan is measured on the calibration text (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CalibrationMeasure {
    /// Mean KL divergence from the full cache's next-token distribution (nats per token).
    FullCacheKl,
    /// Mean next-token cross-entropy (nats per token).
    CrossEntropy,
}

/// How candidate plans are searched (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanSearch {
    /// Score each single removal from the full cache, remove the least damaging together.
    OneShot,
    /// Remove one layer at a time, keeping the `width` best plans of each size (1: greedy).
    Beam {
        /// Plans kept per size, at least 1.
        width: usize,
    },
}

impl fmt::Display for CalibrationMeasure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CalibrationMeasure::FullCacheKl => "kl",
            CalibrationMeasure::CrossEntropy => "ce",
        })
    }
}

impl FromStr for CalibrationMeasure {
    type Err = KvRoutingError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "kl" => Ok(CalibrationMeasure::FullCacheKl),
            "ce" => Ok(CalibrationMeasure::CrossEntropy),
            other => Err(KvRoutingError::InvalidConfig(format!(
                "calibration measure `{other}`: expected `kl` (divergence from the full cache) or `ce` (cross-entropy)"
            ))),
        }
    }
}

impl fmt::Display for PlanSearch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanSearch::OneShot => f.write_str("one-shot"),
            PlanSearch::Beam { width: 1 } => f.write_str("greedy"),
            PlanSearch::Beam { width } => write!(f, "beam:{width}"),
        }
    }
}

impl FromStr for PlanSearch {
    type Err = KvRoutingError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let invalid = || {
            KvRoutingError::InvalidConfig(format!(
                "plan search `{text}`: expected `greedy`, `beam:W` (W >= 1) or `one-shot`"
            ))
        };
        match text.split_once(':') {
            None if text == "greedy" => Ok(PlanSearch::Beam { width: 1 }),
            None if text == "one-shot" => Ok(PlanSearch::OneShot),
            Some(("beam", width)) => match width.parse::<usize>() {
                Ok(width) if width >= 1 => Ok(PlanSearch::Beam { width }),
                _ => Err(invalid()),
            },
            _ => Err(invalid()),
        }
    }
}

/// Configuration of a plan calibration; [`PlanCalibrationConfig::calibrate`] runs it.
#[derive(Config, Debug)]
pub struct PlanCalibrationConfig {
    /// What the plan must fit in.
    pub budget: PlanBudget,
    /// How damage is measured.
    #[config(default = "CalibrationMeasure::FullCacheKl")]
    pub measure: CalibrationMeasure,
    /// How plans are searched.
    #[config(default = "PlanSearch::Beam { width: 1 }")]
    pub search: PlanSearch,
    /// Calibration sequences run together in one forward pass (memory: see the module docs).
    #[config(default = 4)]
    pub batch_size: usize,
}

/// The best plan of one size found by the search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationLevel {
    /// The plan.
    pub plan: CachePlan,
    /// Its damage on the calibration text (nats per token, see [`CalibrationMeasure`]).
    pub damage: f64,
}

/// What a calibration found and what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanCalibration {
    /// The chosen plan.
    pub plan: CachePlan,
    /// Its damage on the calibration text (nats per token).
    pub damage: f64,
    /// The measure under the full cache (0 for the KL; the full cache's cross-entropy).
    pub full_cache_value: f64,
    /// The measure.
    pub measure: CalibrationMeasure,
    /// The search.
    pub search: PlanSearch,
    /// The rule-based plans of the same size (`retention:F`, and `every:K` where it caches as
    /// many layers) with their damage: the chosen plan is one of them when the search found
    /// nothing better.
    pub rule_plans: Vec<CalibrationLevel>,
    /// The damage of removing each layer alone from the full cache (`None` for layer 0, and
    /// for every layer when the budget is the full cache: nothing is searched).
    pub single_removal_damage: Vec<Option<f64>>,
    /// The best plan of each size on the way from the full cache to the budget (beam search;
    /// one-shot: the chosen plan only).
    pub levels: Vec<CalibrationLevel>,
    /// Candidate plans scored.
    pub candidates_evaluated: usize,
    /// Blocks run over the whole calibration text (a full forward pass is `n_layers`).
    pub blocks_run: usize,
    /// Calibration tokens (sequences times inputs per sequence).
    pub calibration_tokens: usize,
    /// Wall-clock of the search.
    pub seconds: f64,
}

/// Where a running calibration stands, reported after each plan size.
#[derive(Debug, Clone, Copy)]
pub struct CalibrationProgress<'a> {
    /// The best plan of the size just searched.
    pub best: &'a CachePlan,
    /// Its damage.
    pub damage: f64,
    /// The size the search stops at.
    pub target_layers: usize,
    /// Candidate plans scored so far.
    pub candidates_evaluated: usize,
    /// Seconds since the calibration started.
    pub seconds: f64,
}
