//! Turns the criterion results of `cargo bench -p kv-routing-benches` into the markdown tables
//! of docs/benchmarks.md, with the KV memory and capacity tables measured from the cache manager
//! and the machine's memory bandwidth measured here.
//!
//! ```text
//! cargo bench-report -- --svg docs/benchmarks-decode.svg > tables.md   # alias in .cargo/config.toml
//! ```

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use kv_routing_backend::{device, Backend, NAME};
use kv_routing_benches::*;
use serde_json::Value;

/// Median and the bounds of its 95% confidence interval, seconds per iteration.
#[derive(Debug, Clone, Copy)]
struct Estimate {
    median: f64,
    low: f64,
    high: f64,
}

fn estimate(root: &Path, group: &str, id: &str) -> Option<Estimate> {
    let path = root.join(group).join(id).join("new").join("estimates.json");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    let median = &json["median"];
    let seconds = |v: &Value| v.as_f64().map(|ns| ns * 1e-9);
    Some(Estimate {
        median: seconds(&median["point_estimate"])?,
        low: seconds(&median["confidence_interval"]["lower_bound"])?,
        high: seconds(&median["confidence_interval"]["upper_bound"])?,
    })
}

fn main() {
    let mut args = std::env::args().skip(1);
    // Where criterion wrote: $CRITERION_HOME when set (one directory per backend), else
    // $CARGO_TARGET_DIR/criterion.
    let mut criterion_dir = std::env::var("CRITERION_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| PathBuf::from("target"))
                .join("criterion")
        });
    let mut svg_path = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--criterion-dir" => criterion_dir = PathBuf::from(args.next().expect("a directory")),
            "--svg" => svg_path = Some(PathBuf::from(args.next().expect("a path"))),
            other => {
                eprintln!(
                    "error: unknown argument {other} (expected --criterion-dir DIR, --svg PATH)"
                );
                std::process::exit(2);
            }
        }
    }
    let bandwidth = memory_bandwidth();
    machine_section(bandwidth);
    memory_section();
    let root = criterion_dir.as_path();
    decode_section(root, bandwidth);
    prefill_section(root);
    growth_section(root);
    train_section(root);
    capacity_section(root);
    baseline_section(root);
    if let Some(path) = svg_path {
        std::fs::write(&path, decode_svg(root)).expect("write the SVG");
        eprintln!("wrote {}", path.display());
    }
}

fn machine_section(bandwidth: f64) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<f64>()
                    .unwrap_or(0.0)
                    / 1048576.0
            })
        })
        .unwrap_or(0.0);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("## Machine\n");
    println!("- backend: **{NAME}**; CPU: {cpu}; {cores} cores; {memory:.0} GiB memory");
    println!("- measured memory bandwidth (copy of 256 MiB, best of 5, read + write counted): **{:.1} GB/s**\n", bandwidth / 1e9);
}

/// Bytes per second of a large `copy_from_slice`, counting the read and the write.
fn memory_bandwidth() -> f64 {
    let n = 256 << 20;
    let source = vec![1u8; n];
    let mut target = vec![0u8; n];
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        target.copy_from_slice(&source);
        std::hint::black_box(&target);
        best = best.min(start.elapsed().as_secs_f64());
    }
    2.0 * n as f64 / best
}

fn memory_section() {
    let device = device();
    println!("## KV cache memory (measured from `KvCacheManager::bytes`)\n");
    println!("| model | plan | cached layers | bytes/token measured | formula | % of full | batch 8 x 4096 tokens |");
    println!("|---|---|---|---|---|---|---|");
    for size in [tiny(), medium()] {
        let model = size.config.init::<Backend>(&device).unwrap();
        let mut full_bytes = 0;
        for (name, plan) in plans(size.config.n_layers) {
            let per_token = model.new_cache(1, 1024, plan.route()).unwrap().bytes() / 1024;
            let big = model.new_cache(8, 4096, plan.route()).unwrap().bytes();
            if name == "full" {
                full_bytes = per_token;
            }
            println!(
                "| {} | {name} | {} | {per_token} | {} | {:.1}% | {:.1} MiB |",
                size.name,
                plan.cached_layers().len(),
                kv_bytes_per_token(&size.config, &plan, burn::tensor::DType::F32),
                100.0 * per_token as f64 / full_bytes as f64,
                big as f64 / 1048576.0
            );
        }
    }
    println!("\nCapacity under a {} GiB KV budget:\n", KV_BUDGET >> 30);
    println!("| model | plan | tokens that fit | batch at 1024 | batch at 4096 |");
    println!("|---|---|---|---|---|");
    for size in [tiny(), medium()] {
        for (name, plan) in plans(size.config.n_layers) {
            println!(
                "| {} | {name} | {} | {} | {} |",
                size.name,
                KV_BUDGET / kv_bytes_per_token(&size.config, &plan, burn::tensor::DType::F32),
                batch_within_budget(&size.config, &plan, 1024, KV_BUDGET),
                batch_within_budget(&size.config, &plan, 4096, KV_BUDGET)
            );
        }
    }
    println!();
}

fn spread(e: &Estimate) -> String {
    format!("±{:.0}%", 50.0 * (e.high - e.low) / e.median)
}

fn decode_section(root: &Path, bandwidth: f64) {
    println!("## Decode throughput (`decode`, {DECODE_STEPS} steps per iteration)\n");
    println!("Tokens/s is batch x steps / median time; the ratio is against the full plan of the same run. Bytes/s counts the weights (f32) and every layer's read of its source's K/V per step.\n");
    println!("| model | batch | context | plan | tokens/s | spread | vs full | GB/s moved | % of bandwidth |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for size in [tiny(), medium()] {
        let parameters = size
            .config
            .parameter_count()
            .expect("the benchmark sizes are small");
        for batch in DECODE_BATCHES {
            for context in DECODE_CONTEXTS {
                let mut full = None;
                for (name, plan) in plans(size.config.n_layers) {
                    let Some(e) =
                        estimate(root, "decode", &bench_id(size.name, batch, name, context))
                    else {
                        continue;
                    };
                    let tokens_per_second = (batch * DECODE_STEPS) as f64 / e.median;
                    let full_rate = *full.get_or_insert(tokens_per_second);
                    let attention = size.config.attention_config();
                    let kv_read = size.config.n_layers
                        * 2
                        * batch
                        * attention.kv_heads()
                        * context
                        * attention.resolved_head_dim()
                        * 4;
                    // Non-source layers skip their K and V projections.
                    let skipped = (size.config.n_layers - plan.cached_layers().len())
                        * 2
                        * size.config.d_model
                        * attention.kv_heads()
                        * attention.resolved_head_dim();
                    // The embedding is a row lookup, not a full read (tied, it is read whole
                    // as the head, and counted once in `parameters`).
                    let lookup_only = if size.config.tie_embeddings {
                        0
                    } else {
                        size.config.vocab_size * size.config.d_model
                    };
                    let weights_read = (parameters - skipped - lookup_only) * 4;
                    let moved = (weights_read + kv_read) as f64 * DECODE_STEPS as f64 / e.median;
                    println!(
                        "| {} | {batch} | {context} | {name} | {tokens_per_second:.1} | {} | {:.2}x | {:.2} | {:.0}% |",
                        size.name,
                        spread(&e),
                        tokens_per_second / full_rate,
                        moved / 1e9,
                        100.0 * moved / bandwidth
                    );
                }
            }
        }
    }
    println!();
}

fn prefill_section(root: &Path) {
    println!("## Time to first token (`prefill`, batch 1)\n");
    println!("| model | prompt | plan | median | spread | vs full |");
    println!("|---|---|---|---|---|---|");
    for size in [tiny(), medium()] {
        for len in PREFILL_LENGTHS {
            let mut full = None;
            for (name, _) in plans(size.config.n_layers) {
                let Some(e) = estimate(root, "prefill", &bench_id(size.name, 1, name, len)) else {
                    continue;
                };
                let reference = *full.get_or_insert(e.median);
                println!(
                    "| {} | {len} | {name} | {} | {} | {:.2}x |",
                    size.name,
                    seconds(e.median),
                    spread(&e),
                    e.median / reference
                );
            }
        }
    }
    println!();
}

fn growth_section(root: &Path) {
    println!("## Cost growth (`context_growth`, full plan, batch 1)\n");
    println!("Linear growth shows as a ratio of about 2 per doubling once attention dominates the step; quadratic growth would show as 4.\n");
    println!("| model | context | ms per step | spread | x previous context |");
    println!("|---|---|---|---|---|");
    for size in [tiny(), medium()] {
        let mut previous: Option<f64> = None;
        for context in GROWTH_CONTEXTS {
            let Some(e) = estimate(
                root,
                "context_growth",
                &bench_id(size.name, 1, "full", context),
            ) else {
                continue;
            };
            let step = e.median / DECODE_STEPS as f64;
            let ratio = previous
                .map(|p| format!("{:.2}", step / p))
                .unwrap_or_else(|| "-".into());
            println!(
                "| {} | {context} | {:.2} | {} | {ratio} |",
                size.name,
                step * 1e3,
                spread(&e)
            );
            previous = Some(step);
        }
    }
    println!();
}

fn train_section(root: &Path) {
    println!("## Training step (`train_step`: forward, backward, AdamW)\n");
    println!("| model | variant | median | spread | vs p = 0 |");
    println!("|---|---|---|---|---|");
    for size in [tiny(), medium()] {
        let ids = TRAIN_PROBABILITIES
            .iter()
            .map(|p| format!("{}_p{p}", size.name))
            .chain(std::iter::once(format!("{}_p0.5_all_kv", size.name)));
        let mut reference = None;
        for id in ids {
            let Some(e) = estimate(root, "train_step", &id) else {
                continue;
            };
            let base = *reference.get_or_insert(e.median);
            println!(
                "| {} | {} | {} | {} | {:.3}x |",
                size.name,
                &id[size.name.len() + 1..],
                seconds(e.median),
                spread(&e),
                e.median / base
            );
        }
    }
    println!();
}

fn capacity_section(root: &Path) {
    println!(
        "## Capacity: aggregate decode at the largest batch a {} KV budget holds (context {CAPACITY_CONTEXT})\n",
        budget_label(kv_budget())
    );
    println!("| model | plan | batch | tokens/s | spread | vs full |");
    println!("|---|---|---|---|---|---|");
    for size in [tiny(), medium()] {
        let mut full = None;
        for (name, plan) in plans(size.config.n_layers) {
            let batch = capacity_batch(&size.config, &plan);
            let Some(e) = estimate(
                root,
                "capacity",
                &bench_id(size.name, batch, name, CAPACITY_CONTEXT),
            ) else {
                continue;
            };
            let rate = (batch * DECODE_STEPS) as f64 / e.median;
            let reference = *full.get_or_insert(rate);
            println!(
                "| {} | {name} | {batch} | {rate:.1} | {} | {:.2}x |",
                size.name,
                spread(&e),
                rate / reference
            );
        }
    }
    println!();
}

fn baseline_section(root: &Path) {
    println!("## Against burn-nn's `MultiHeadAttention` + `MhaCache` (one layer, d_model 768, 12 heads)\n");
    println!("| batch | context | ours ms/step | MhaCache ms/step | speed-up |");
    println!("|---|---|---|---|---|");
    for (batch, contexts) in [(1, &[256, 1024, 4096][..]), (8, &[256, 1024][..])] {
        for &context in contexts {
            let ours = estimate(root, "mha_baseline", &format!("ours_b{batch}_c{context}"));
            let theirs = estimate(
                root,
                "mha_baseline",
                &format!("burn_mhacache_b{batch}_c{context}"),
            );
            if let (Some(ours), Some(theirs)) = (ours, theirs) {
                let per_step = |e: Estimate| e.median / DECODE_STEPS as f64 * 1e3;
                println!(
                    "| {batch} | {context} | {:.2} | {:.2} | {:.1}x |",
                    per_step(ours),
                    per_step(theirs),
                    theirs.median / ours.median
                );
            }
        }
    }
    println!();
}

fn seconds(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else {
        format!("{:.1} ms", s * 1e3)
    }
}

/// Decode tokens/s against context, one line per plan, one panel per model (batch 8).
fn decode_svg(root: &Path) -> String {
    let (w, h, m) = (380.0, 260.0, 60.0);
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let sizes = [tiny(), medium()];
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#,
        sizes.len() as f64 * (w + m) + m,
        h + 2.0 * m + 30.0
    );
    for (panel, size) in sizes.iter().enumerate() {
        let left = m + panel as f64 * (w + m);
        let lines: Vec<Vec<(f64, f64)>> = plans(size.config.n_layers)
            .iter()
            .map(|(name, _)| {
                DECODE_CONTEXTS
                    .iter()
                    .filter_map(|&c| {
                        estimate(root, "decode", &bench_id(size.name, 8, name, c))
                            .map(|e| (c as f64, 8.0 * DECODE_STEPS as f64 / e.median))
                    })
                    .collect()
            })
            .collect();
        let top = lines
            .iter()
            .flatten()
            .map(|p| p.1)
            .fold(0.0, f64::max)
            .max(1e-9)
            * 1.1;
        let x = |c: f64| left + (c.log2() - 8.0) / 4.0 * w;
        let y = |v: f64| m + h - v / top * h;
        svg.push_str(&format!(
            r#"<rect x="{left}" y="{m}" width="{w}" height="{h}" fill="none" stroke="black"/><text x="{}" y="{}" text-anchor="middle" font-size="14">{} model, batch 8: decode tokens/s ({NAME})</text><text x="{}" y="{}" text-anchor="middle">context (tokens, log scale)</text>"#,
            left + w / 2.0, m - 12.0, size.name, left + w / 2.0, m + h + 36.0
        ));
        for c in DECODE_CONTEXTS {
            svg.push_str(&format!(
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{c}</text>"#,
                x(c as f64),
                m + h + 16.0
            ));
        }
        for i in 0..=4 {
            let v = top * i as f64 / 4.0;
            svg.push_str(&format!(r##"<line x1="{left}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{v:.0}</text>"##, left + w, y(v), y(v), left - 5.0, y(v) + 4.0));
        }
        for (i, line) in lines.iter().enumerate() {
            let points: Vec<String> = line
                .iter()
                .map(|&(c, v)| format!("{:.1},{:.1}", x(c), y(v)))
                .collect();
            svg.push_str(&format!(
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
                points.join(" "),
                colors[i]
            ));
        }
    }
    for (i, (name, _)) in plans(12).iter().enumerate() {
        let lx = m + i as f64 * 110.0;
        let ly = h + 2.0 * m + 15.0;
        svg.push_str(&format!(r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{}" stroke-width="2"/><text x="{}" y="{}">{name}</text>"#, lx + 25.0, colors[i], lx + 30.0, ly + 4.0));
    }
    svg.push_str("</svg>\n");
    svg
}
