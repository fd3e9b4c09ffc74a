//! The main example's output: one table row per model and plan, then each prompt's
//! continuations side by side.

use std::fmt::Write;

use crate::format_bytes;
use crate::plan_comparison::{ComparisonSettings, ModelOutcome};

/// Header of the table (also how tests find it).
pub const TABLE_HEADER: [&str; 7] = [
    "model",
    "plan",
    "cached layers",
    "KV/token",
    "loss",
    "vs full",
    "same greedy",
];

/// The table and the continuations as text.
pub fn render_comparison(outcomes: &[ModelOutcome], settings: &ComparisonSettings) -> String {
    let mut out = String::new();
    let row = |cells: [&str; 7]| {
        format!(
            "{:<9} {:<14} {:<14} {:>9} {:>7} {:>8} {:>12}\n",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6]
        )
    };
    out.push_str(&row(TABLE_HEADER));
    for outcome in outcomes {
        for plan in &outcome.plans {
            let layers = plan
                .cached_layers
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let change = if plan.plan == "full" {
                "-".to_string()
            } else {
                format!("{:+.1}%", plan.loss_change_percent)
            };
            out.push_str(&row([
                outcome.model.name,
                &format!("{} ({:.0}%)", plan.plan, plan.retention * 100.0),
                &layers,
                &format_bytes(plan.kv_bytes_per_token),
                &format!("{:.3}", plan.loss),
                &change,
                &format!("{:.0}%", plan.same_as_full * 100.0),
            ]));
        }
    }
    for (index, prompt) in settings.prompts.iter().enumerate() {
        let _ = writeln!(out, "\nprompt {:?}", prompt);
        for outcome in outcomes {
            for plan in &outcome.plans {
                let _ = writeln!(
                    out,
                    "  {:<9} {:<8} {:?}",
                    outcome.model.name, plan.plan, plan.continuations[index]
                );
            }
        }
    }
    out
}
