//! Weight-streaming throughput of the matmuls a decode step makes, f32 against f16, on the
//! selected backend: 30 distinct `[1536, 576]` projections (a SmolLM2 MLP matrix per layer, the
//! checkpoint's `[out, in]` layout used through its transposed view) and a `[49152, 576]` tied
//! LM head, each multiplied by `m` rows. Weights total 106 MB / 113 MB in f32, more than the
//! last-level cache, so every product streams its weight from memory as in a real decode step.
//! Prints milliseconds and the weight bytes per second achieved.
//!
//! `cargo run --release -p kv-routing-benches --example matmul_probe`
use std::time::Instant;

use burn::tensor::{DType, Distribution, Tensor};
use kv_routing_backend::{device, Backend, NAME};
use kv_routing_benches::sync;

fn main() {
    // Freed activations kept for reuse (an opt-in of programs; docs/backends.md).
    kv_routing_backend::retain_freed_memory();
    let device = device();
    for dtype in [DType::F32, DType::F16] {
        let bytes = dtype.size();
        let random = |rows, cols| {
            Tensor::<Backend, 2>::random([rows, cols], Distribution::Default, &device).cast(dtype)
        };
        let projections: Vec<_> = (0..30).map(|_| random(1536, 576).transpose()).collect();
        let head = random(49152, 576).transpose();
        for m in [1, 8, 64] {
            let x = random(m, 576);
            let time = |weights: &[Tensor<Backend, 2>]| {
                sync(x.clone().matmul(weights[0].clone()));
                let start = Instant::now();
                for _ in 0..4 {
                    for w in weights {
                        sync(x.clone().matmul(w.clone()));
                    }
                }
                start.elapsed().as_secs_f64() / 4.0
            };
            let streamed = time(&projections);
            let lm_head = time(std::slice::from_ref(&head));
            let gb = |values: usize, seconds: f64| (values * bytes) as f64 / seconds / 1e9;
            println!(
                "{NAME} {dtype:?} m={m}: 30 projections {:.2} ms ({:.1} GB/s of weights), LM head {:.2} ms ({:.1} GB/s)",
                streamed * 1e3,
                gb(30 * 1536 * 576, streamed),
                lm_head * 1e3,
                gb(49152 * 576, lm_head),
            );
        }
    }
}
