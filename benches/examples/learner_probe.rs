//! Training throughput on `burn-train`'s `Learner` against a plain loop
//! (`kv_routing_train::reference_loop`, the loop the trainer ran before it moved to the
//! `Learner`), the same steps (model, data, routes, schedule, clipping, AdamW) measured in
//! alternating rounds in one process, with the ratio per round.
//!
//! ```text
//! cargo run --release -p kv-routing-benches --example learner_probe -- <steps> <rounds> [tiny|medium] [devices]
//! ```
//!
//! Each round times `steps` steps three ways, from the call to its return (data opened, every
//! step): the plain loop; Burn's `Learner` alone (`RoutedLmTraining`, one validation batch after
//! the last step); and a whole run (`trainer::train_on`: the `Learner` plus the run's per-step
//! log line, a validation batch and a checkpoint at the end). `devices` (default 1) runs the
//! `Learner` data-parallel on `kv_routing_backend::training_devices(devices)` (Burn's
//! multi-device strategy, one worker thread per device): GPUs on cuda, workers sharing the
//! device elsewhere.
use std::time::Instant;

use kv_routing_backend::{device, training_devices, AutodiffBackend};
use kv_routing_benches::*;
use kv_routing_train::data::DataSource;
use kv_routing_train::learner::{LearnerSetup, RoutedLmTraining, SilentRenderer};
use kv_routing_train::reference_loop::reference_loop;
use kv_routing_train::train_config::TrainConfig;
use kv_routing_train::trainer::{train_on, RunOptions, Start};

fn main() {
    // Freed activations kept for reuse (an opt-in of programs; docs/backends.md).
    kv_routing_backend::retain_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let size = match args.get(2).map(String::as_str) {
        None | Some("tiny") => Some(tiny()),
        Some("medium") => Some(medium()),
        Some(_) => None,
    };
    let devices = args.get(3).map_or(Some(1), |a| a.parse::<usize>().ok());
    let (Some(steps), Some(rounds), Some(size), Some(devices)) = (
        args.first().and_then(|a| a.parse::<u64>().ok()),
        args.get(1).and_then(|a| a.parse::<usize>().ok()),
        size,
        devices,
    ) else {
        eprintln!("usage: learner_probe <steps> <rounds> [tiny|medium] [devices]");
        std::process::exit(2);
    };
    let (batch_size, seq_len) = size.train_batch;
    let config = TrainConfig {
        model: size.config.clone(),
        p: 0.5,
        data: DataSource::Synthetic { seed: 0 },
        seq_len,
        batch_size,
        steps,
        warmup_steps: 1,
        eval_every: 0,
        eval_batches: 1,
        checkpoint_every: 0,
        ..TrainConfig::small(2, 64, seq_len)
    };
    let device = device();
    let tokens = (steps as usize * batch_size * seq_len) as f64;
    println!(
        "{} model, batch {batch_size} x {seq_len} tokens, {steps} steps per run, Learner on {devices} device(s)",
        size.name
    );
    let model = || {
        config
            .model
            .init_seeded::<AutodiffBackend>(config.init_seed, &device)
            .expect("a valid model")
    };
    let devices = training_devices(devices);
    let tokens_per_second = |start: Instant| tokens / start.elapsed().as_secs_f64();
    let (mut learner_ratios, mut run_ratios) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let out = std::env::temp_dir().join(format!("learner_probe_{}", std::process::id()));
        let start = Instant::now();
        reference_loop(&config, model()).expect("the loop trains");
        let looped = tokens_per_second(start);

        let start = Instant::now();
        let setup = LearnerSetup::new(devices.clone());
        let mut run = RoutedLmTraining::new(&config, model(), setup, &out).expect("a valid run");
        run.training = run.training.renderer(SilentRenderer);
        run.launch();
        let learned = tokens_per_second(start);
        std::fs::remove_dir_all(&out).ok();

        let start = Instant::now();
        train_on::<AutodiffBackend>(
            config.clone(),
            Start::Fresh,
            &out,
            RunOptions::default(),
            &devices,
        )
        .expect("the run trains");
        let whole_run = tokens_per_second(start);
        std::fs::remove_dir_all(&out).ok();

        learner_ratios.push(learned / looped);
        run_ratios.push(whole_run / looped);
        println!(
            "round {round}: loop {looped:.0} tok/s, Learner {learned:.0} tok/s ({:.3}), run {whole_run:.0} tok/s ({:.3})",
            learned / looped,
            whole_run / looped
        );
    }
    for (name, mut ratios) in [("Learner", learner_ratios), ("run", run_ratios)] {
        ratios.sort_by(f64::total_cmp);
        println!(
            "{name} / loop: median {:.3} (range {:.3} - {:.3}) over {rounds} rounds",
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1]
        );
    }
}
