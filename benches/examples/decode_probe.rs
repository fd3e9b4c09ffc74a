//! Times single decode steps of the tiny model (no criterion) to see their distribution.
use kv_routing::CachePlan;
use kv_routing_backend::{device, Backend};
use kv_routing_benches::*;
use std::time::Instant;

fn main() {
    // Freed activations kept for reuse (an opt-in of programs; docs/backends.md).
    kv_routing_backend::retain_freed_memory();
    let device = device();
    let size = tiny();
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let (batch, context, k) = (args[0], args[1], args[2]);
    let model = size.config.init::<Backend>(&device).unwrap();
    let plan = CachePlan::every_kth(12, k).unwrap();
    let mut cache = model.new_cache(batch, context + 64, plan.route()).unwrap();
    fill_cache(&mut cache, context, &device).unwrap();
    let mut times = Vec::new();
    for _ in 0..48 {
        let t = Instant::now();
        decode(&model, &mut cache, 1).unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "b{batch} c{context} every{k}: min {:.1} median {:.1} max {:.1} ms; first 8 {:?}",
        sorted[0],
        sorted[24],
        sorted[47],
        &times[..8].iter().map(|t| *t as i32).collect::<Vec<_>>()
    );
}
