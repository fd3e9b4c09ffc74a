//! Memory read bandwidth of this machine, the physical bound of a decode step (which must read
//! every weight once): sums a 1 GiB f32 array with 1 and with all threads, 5 times each, and
//! prints the best GB/s. `cargo run --release -p kv-routing-benches --example bandwidth_probe`
use std::time::Instant;

/// A sum with 16 independent accumulators, so that the compiler vectorizes it and the loop is
/// bound by memory, not by the latency of one chain of additions.
fn sum(values: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = values.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += v;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

fn main() {
    let values = vec![1.0f32; 1 << 28];
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    for threads in [1, all] {
        let best = (0..5)
            .map(|_| {
                let start = Instant::now();
                let total: f32 = std::thread::scope(|scope| {
                    let handles: Vec<_> = values
                        .chunks(values.len().div_ceil(threads))
                        .map(|part| scope.spawn(move || sum(part)))
                        .collect();
                    handles.into_iter().map(|h| h.join().unwrap()).sum()
                });
                assert!(total > 0.0);
                (values.len() * 4) as f64 / start.elapsed().as_secs_f64() / 1e9
            })
            .fold(0.0, f64::max);
        println!("read bandwidth, {threads} thread(s): {best:.1} GB/s");
    }
}
