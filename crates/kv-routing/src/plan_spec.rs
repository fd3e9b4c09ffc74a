//! Plans named in text, as command lines and configuration files write them: `full`,
//! `every:K`, `retention:F`, `layers:0,3,5`.
//!
//! # Contract
//! - [`CachePlan::parse`] accepts exactly those four forms (surrounding spaces ignored) and
//!   validates the plan against the model's layer count; every failure is
//!   [`KvRoutingError::InvalidPlan`] naming the text it was given.
//! - [`CachePlan::spec`] writes the `layers:` form, which parses back to the same plan: the
//!   form a search prints for the other commands to take.
//! - [`split_plan_list`] splits a comma-separated list of plans, keeping the commas inside a
//!   `layers:` form (`full,layers:0,3,5,every:2` is three plans).

use crate::cache_plan::CachePlan;
use crate::error::{KvRoutingError, Result};

impl CachePlan {
    /// Parses `spec` (`full`, `every:K`, `retention:F`, `layers:0,3,5`) into a plan for a model
    /// of `n_layers` layers.
    pub fn parse(spec: &str, n_layers: usize) -> Result<Self> {
        let spec = spec.trim();
        let (kind, argument) = spec.split_once(':').unwrap_or((spec, ""));
        let invalid = |why: String| KvRoutingError::InvalidPlan(format!("`{spec}`: {why}"));
        let plan = match kind {
            "full" if argument.is_empty() => CachePlan::full(n_layers),
            "every" => {
                let k = argument
                    .parse::<usize>()
                    .map_err(|_| invalid("expected `every:K` with an integer K >= 1".into()))?;
                CachePlan::every_kth(n_layers, k)
            }
            "retention" => {
                let fraction = argument
                    .parse::<f64>()
                    .map_err(|_| invalid("expected `retention:F` with F in (0, 1]".into()))?;
                CachePlan::retention(n_layers, fraction)
            }
            "layers" => {
                let layers = argument
                    .split(',')
                    .map(|l| l.trim().parse::<usize>())
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|_| invalid("expected `layers:0,3,5`".into()))?;
                CachePlan::new(n_layers, layers)
            }
            _ => {
                return Err(invalid(
                    "expected `full`, `every:K`, `retention:F` or `layers:0,3,5`".into(),
                ))
            }
        };
        plan.map_err(|e| match e {
            KvRoutingError::InvalidPlan(why) => invalid(why),
            other => invalid(other.to_string()),
        })
    }

    /// The plan in the `layers:` form (`layers:0,3,5`), which [`CachePlan::parse`] reads back.
    pub fn spec(&self) -> String {
        let layers: Vec<String> = self.cached_layers().iter().map(usize::to_string).collect();
        format!("layers:{}", layers.join(","))
    }
}

/// Splits a comma-separated list of plans into one text per plan, keeping the commas of a
/// `layers:` form with it: `full,layers:0,3,5,every:2` gives `full`, `layers:0,3,5` and
/// `every:2`. Pieces are trimmed; empty pieces are dropped.
pub fn split_plan_list<S: AsRef<str>>(pieces: &[S]) -> Vec<String> {
    let mut plans: Vec<String> = Vec::new();
    for piece in pieces.iter().flat_map(|p| p.as_ref().split(',')) {
        let piece = piece.trim();
        if piece.is_empty() {
            continue;
        }
        let continues_layers = piece.bytes().all(|b| b.is_ascii_digit())
            && plans.last().is_some_and(|last| last.starts_with("layers:"));
        match plans.last_mut() {
            Some(last) if continues_layers => {
                last.push(',');
                last.push_str(piece);
            }
            _ => plans.push(piece.to_string()),
        }
    }
    plans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_rejects_bad_ones_naming_them() {
        assert_eq!(
            CachePlan::parse("full", 6).unwrap(),
            CachePlan::full(6).unwrap()
        );
        assert_eq!(
            CachePlan::parse(" every:2 ", 6).unwrap(),
            CachePlan::every_kth(6, 2).unwrap()
        );
        assert_eq!(
            CachePlan::parse("retention:0.25", 8).unwrap(),
            CachePlan::every_kth(8, 4).unwrap()
        );
        assert_eq!(
            CachePlan::parse("layers:0, 4", 6).unwrap().cached_layers(),
            &[0, 4]
        );
        for bad in [
            "every:x",
            "every:0",
            "layers:1,2",
            "layers:0,9",
            "layers:0,0",
            "layers:",
            "half",
            "full:2",
            "retention:2",
            "retention:nan",
        ] {
            let error = CachePlan::parse(bad, 6).unwrap_err();
            assert!(matches!(error, KvRoutingError::InvalidPlan(_)), "{error}");
            assert!(error.to_string().contains(bad), "{error}");
        }
    }

    #[test]
    fn the_layers_form_reads_back_as_the_same_plan() {
        for spec in ["full", "every:3", "retention:0.4", "layers:0,1,5,6"] {
            let plan = CachePlan::parse(spec, 7).unwrap();
            assert_eq!(CachePlan::parse(&plan.spec(), 7).unwrap(), plan, "{spec}");
        }
        assert_eq!(CachePlan::every_kth(7, 3).unwrap().spec(), "layers:0,3,6");
    }

    #[test]
    fn lists_keep_the_commas_of_a_layers_form() {
        assert_eq!(
            split_plan_list(&["full,layers:0,3,5,every:2"]),
            ["full", "layers:0,3,5", "every:2"]
        );
        assert_eq!(
            split_plan_list(&["layers:0,1", "layers:0, 2", "full"]),
            ["layers:0,1", "layers:0,2", "full"]
        );
        // A number after anything but a `layers:` form stays its own (invalid) plan.
        assert_eq!(split_plan_list(&["every:2,3"]), ["every:2", "3"]);
        assert_eq!(split_plan_list(&[" , full,,"]), ["full"]);
    }
}
