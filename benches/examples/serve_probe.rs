//! Serves a fixed set of requests under a fixed KV budget on a real checkpoint (no criterion):
//! `serve_probe MODEL f32|f16 BUDGET_MB REQUESTS PROMPT NEW SET...` where each SET is
//! `PLAN[+PLAN...]@KV_DTYPE` (the requests take the plans in turn, e.g. `full+every:4@native`).
//! Prints, per set: the most requests held at once, aggregate new tokens/s, the requests'
//! mean and longest time from admission to their last token, the run's wall-clock time and
//! its peak KV bytes (docs/benchmarks.md, "Serving under a KV budget").
use kv_routing::{CachePlan, KvDtype, ServeConfig, ServeRequest};
use kv_routing_backend::{device_with_precision, Backend, Precision};
use kv_routing_benches::synthetic_tokens;

fn main() {
    kv_routing_backend::retain_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 7 {
        eprintln!("usage: serve_probe MODEL f32|f16 BUDGET_MB REQUESTS PROMPT NEW PLAN[+PLAN]@KV_DTYPE...");
        std::process::exit(2);
    }
    let precision: Precision = args[1].parse().unwrap();
    let budget = (args[2].parse::<f64>().unwrap() * 1e6) as usize;
    let (count, prompt, new): (usize, usize, usize) = (
        args[3].parse().unwrap(),
        args[4].parse().unwrap(),
        args[5].parse().unwrap(),
    );
    let device = device_with_precision(precision).unwrap();
    let loaded =
        kv_routing_train::pretrained::load_model_dir::<Backend>(args[0].as_ref(), &device).unwrap();
    for set in &args[6..] {
        let (plans, kv) = set.split_once('@').expect("PLAN[+PLAN]@KV_DTYPE");
        let kv: KvDtype = kv.parse().unwrap();
        let model = loaded.model.clone().with_kv_dtype(kv).unwrap();
        let n = model.n_layers();
        let routes: Vec<_> = plans
            .split('+')
            .map(|spec| CachePlan::parse(spec, n).unwrap().route())
            .collect();
        let prompts = synthetic_tokens(count, prompt, model.vocab_size());
        let requests: Vec<ServeRequest> = prompts
            .into_iter()
            .enumerate()
            .map(|(i, prompt)| ServeRequest {
                prompt,
                route: routes[i % routes.len()].clone(),
                max_new_tokens: new,
            })
            .collect();
        let config = ServeConfig {
            kv_budget: budget,
            stop_tokens: Vec::new(),
        };
        let report = model.serve(&requests, &config).unwrap();
        let service: Vec<f64> = report
            .requests
            .iter()
            .map(|r| r.finished_seconds - r.queued_seconds)
            .collect();
        println!(
            "{set} ({} weights, budget {:.1} MB): at most {} at once, {:.1} new tokens/s, request time mean {:.2} s max {:.2} s, run {:.1} s, peak KV {:.2} MB",
            precision.name(),
            budget as f64 / 1e6,
            report.peak_concurrent,
            report.tokens_per_second(),
            service.iter().sum::<f64>() / service.len() as f64,
            service.iter().cloned().fold(0.0, f64::max),
            report.seconds,
            report.peak_kv_bytes as f64 / 1e6,
        );
    }
}
