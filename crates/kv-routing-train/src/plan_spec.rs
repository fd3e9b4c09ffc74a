//! Plans named on the command line: `full`, `every:K`, `retention:F`, `layers:0,3,5`.

use kv_routing::CachePlan;

use crate::error::{Result, TrainError};

/// Parses `spec` into a plan for a model of `n_layers` layers.
pub fn parse_plan(spec: &str, n_layers: usize) -> Result<CachePlan> {
    let spec = spec.trim();
    let (kind, argument) = spec.split_once(':').unwrap_or((spec, ""));
    let invalid = |why: String| TrainError::Config(format!("plan `{spec}`: {why}"));
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
    plan.map_err(|e| invalid(e.to_string()))
}

/// A short name for a plan: `every:2 (50%)`.
pub fn plan_label(spec: &str, plan: &CachePlan) -> String {
    format!("{spec} ({:.0}%)", plan.retention_fraction() * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_rejects_bad_ones() {
        assert_eq!(parse_plan("full", 6).unwrap(), CachePlan::full(6).unwrap());
        assert_eq!(
            parse_plan("every:2", 6).unwrap(),
            CachePlan::every_kth(6, 2).unwrap()
        );
        assert_eq!(
            parse_plan("retention:0.25", 8).unwrap(),
            CachePlan::every_kth(8, 4).unwrap()
        );
        assert_eq!(
            parse_plan("layers:0, 4", 6).unwrap().cached_layers(),
            &[0, 4]
        );
        for bad in [
            "every:x",
            "every:0",
            "layers:1,2",
            "layers:0,9",
            "half",
            "retention:2",
        ] {
            let message = parse_plan(bad, 6).unwrap_err().to_string();
            assert!(message.contains(bad), "{message}");
        }
    }
}
