//! An SVG plot of quality against KV memory: validation loss (and recall accuracy when the data
//! has recall queries) versus the fraction of the full cache kept, one line per model.

use crate::evaluate::PlanReport;
use crate::report::ModelEvaluation;

const PANEL_WIDTH: f64 = 420.0;
const PANEL_HEIGHT: f64 = 300.0;
const MARGIN: f64 = 55.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// The SVG document.
pub fn quality_vs_memory_svg(evaluations: &[ModelEvaluation]) -> String {
    let with_recall = evaluations
        .iter()
        .any(|e| e.plans.iter().any(|p| p.recall_accuracy.is_some()));
    let panels: &[Metric] = if with_recall {
        &[Metric::Loss, Metric::Recall]
    } else {
        &[Metric::Loss]
    };
    let width = panels.len() as f64 * (PANEL_WIDTH + MARGIN) + MARGIN;
    let height = PANEL_HEIGHT + 2.0 * MARGIN + 20.0 * evaluations.len() as f64;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
"#
    );
    for (index, metric) in panels.iter().enumerate() {
        let left = MARGIN + index as f64 * (PANEL_WIDTH + MARGIN);
        let points: Vec<Vec<(f64, f64)>> = evaluations
            .iter()
            .map(|e| {
                e.plans
                    .iter()
                    .filter_map(|p| metric.value(p).map(|v| (p.retention * 100.0, v)))
                    .collect()
            })
            .collect();
        svg.push_str(&panel(left, metric.title(), &points));
    }
    for (i, evaluation) in evaluations.iter().enumerate() {
        let y = PANEL_HEIGHT + MARGIN + 40.0 + 20.0 * i as f64;
        let color = COLORS[i % COLORS.len()];
        svg.push_str(&format!(
            r#"<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="{color}" stroke-width="2"/><text x="{tx}" y="{ty}">{name} (p = {p})</text>
"#,
            x1 = MARGIN,
            x2 = MARGIN + 30.0,
            tx = MARGIN + 38.0,
            ty = y + 4.0,
            name = escape(&evaluation.name),
            p = evaluation.p
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

/// What a panel plots.
enum Metric {
    Loss,
    Recall,
}

impl Metric {
    fn title(&self) -> &'static str {
        match self {
            Metric::Loss => "validation loss (nats/token)",
            Metric::Recall => "recall accuracy (%)",
        }
    }

    fn value(&self, plan: &PlanReport) -> Option<f64> {
        match self {
            Metric::Loss => Some(plan.val_loss),
            Metric::Recall => plan.recall_accuracy.map(|r| r * 100.0),
        }
    }
}

fn panel(left: f64, title: &str, lines: &[Vec<(f64, f64)>]) -> String {
    let top = MARGIN;
    let values: Vec<f64> = lines.iter().flatten().map(|&(_, v)| v).collect();
    let (mut low, mut high) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    if !low.is_finite() {
        (low, high) = (0.0, 1.0);
    }
    // A flat series still gets a readable axis: at least 2% of the value's size either side.
    let pad = ((high - low) * 0.1).max(0.02 * high.abs().max(low.abs()).max(1e-3));
    let (low, high) = (low - pad, high + pad);
    let x = |retention: f64| left + retention / 100.0 * PANEL_WIDTH;
    let y = |v: f64| top + PANEL_HEIGHT - (v - low) / (high - low) * PANEL_HEIGHT;
    let mut out = format!(
        r#"<rect x="{left}" y="{top}" width="{PANEL_WIDTH}" height="{PANEL_HEIGHT}" fill="none" stroke="black"/>
<text x="{tx}" y="{ty}" text-anchor="middle" font-size="14">{title} vs KV cache kept</text>
<text x="{tx}" y="{xl}" text-anchor="middle">KV cache kept (% of full)</text>
"#,
        tx = left + PANEL_WIDTH / 2.0,
        ty = top - 15.0,
        xl = top + PANEL_HEIGHT + 35.0,
    );
    for tick in [0.0, 25.0, 50.0, 75.0, 100.0] {
        out.push_str(&format!(
            r##"<line x1="{px}" y1="{y0}" x2="{px}" y2="{y1}" stroke="#ddd"/><text x="{px}" y="{ly}" text-anchor="middle">{tick}</text>
"##,
            px = x(tick),
            y0 = top,
            y1 = top + PANEL_HEIGHT,
            ly = top + PANEL_HEIGHT + 16.0
        ));
    }
    for i in 0..=4 {
        let v = low + (high - low) * i as f64 / 4.0;
        out.push_str(&format!(
            r##"<line x1="{left}" y1="{py}" x2="{right}" y2="{py}" stroke="#eee"/><text x="{lx}" y="{ty}" text-anchor="end">{v:.3}</text>
"##,
            py = y(v),
            right = left + PANEL_WIDTH,
            lx = left - 6.0,
            ty = y(v) + 4.0
        ));
    }
    for (i, line) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut sorted = line.clone();
        // Plans keeping the same memory (every:3 and every:4 of 6 layers both keep 2) stack
        // vertically, in value order.
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let path: Vec<String> = sorted
            .iter()
            .map(|&(r, v)| format!("{:.1},{:.1}", x(r), y(v)))
            .collect();
        out.push_str(&format!(
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>
"#,
            path.join(" ")
        ));
        for &(r, v) in &sorted {
            out.push_str(&format!(
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"/>
"#,
                x(r),
                y(v)
            ));
        }
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
