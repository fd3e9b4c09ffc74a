//! Times single training steps of the tiny (or medium) model (no criterion), interleaving three
//! loops step by step: p = 0, p = `p` with a fresh route every step, and p = `p` repeating its
//! first route.
//! A steady cost of routing shows in both routed loops; a one-off cost per new route (a backend
//! compiling kernels for a new op pattern) only in the fresh-route loop.
//!
//! ```text
//! cargo run --release -p kv-routing-benches --example train_probe -- <p> <steps> [tiny|medium] [single]
//! ```
//!
//! `single` runs only the fresh-route loop at `p` (one workload per process, for `perf`).
use kv_routing_backend::{device, AutodiffBackend};
use kv_routing_benches::*;
use std::time::Instant;

fn main() {
    // Freed activations kept for reuse (an opt-in of programs; docs/backends.md).
    kv_routing_backend::retain_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let size = match args.get(2).map(String::as_str) {
        None | Some("tiny") => Some(tiny()),
        Some("medium") => Some(medium()),
        Some(_) => None,
    };
    let (Some(p), Some(steps), Some(size)) = (
        args.first().and_then(|a| a.parse::<f64>().ok()),
        args.get(1).and_then(|a| a.parse::<usize>().ok()),
        size,
    ) else {
        eprintln!("usage: train_probe <p> <steps> [tiny|medium] [single]");
        std::process::exit(2);
    };
    let (batch, seq_len) = size.train_batch;
    let tokens = synthetic_tokens(batch, seq_len, size.config.vocab_size);
    let device = device();
    let shared = |route: &kv_routing::Route| {
        (0..route.n_layers())
            .filter(|&layer| route.source_of(layer) != layer)
            .count()
    };
    let new_loop = |p| TrainLoop::<AutodiffBackend>::new(&size.config, p, &device).unwrap();
    let ms = |start: Instant| start.elapsed().as_secs_f64() * 1e3;
    if args.get(3).map(String::as_str) == Some("single") {
        let mut training = new_loop(p);
        for step in 0..steps {
            let start = Instant::now();
            let route = training.step(&tokens, false).unwrap();
            println!(
                "step {step}: p{p} {:.0} ms ({} shared)",
                ms(start),
                shared(&route)
            );
        }
        return;
    }
    let (mut unrouted, mut fresh, mut repeated) = (new_loop(0.0), new_loop(p), new_loop(p));
    let fixed = repeated.step(&tokens, false).unwrap();
    println!("repeated route: {:?}", fixed.src());
    for step in 0..steps {
        let start = Instant::now();
        unrouted.step(&tokens, false).unwrap();
        let t_unrouted = ms(start);
        let start = Instant::now();
        let route = fresh.step(&tokens, false).unwrap();
        let t_fresh = ms(start);
        let start = Instant::now();
        repeated.step_on(&tokens, &fixed, false).unwrap();
        let t_repeated = ms(start);
        println!(
            "step {step}: p0 {t_unrouted:.0} ms | p{p} fresh {t_fresh:.0} ms ({} shared) | p{p} repeated {t_repeated:.0} ms ({} shared)",
            shared(&route),
            shared(&fixed)
        );
    }
}
