//! Times one SmolLM2-shaped attention layer (d_model 576, 9 query / 3 key-value heads of 64):
//!
//! - `attention_probe LEN [REPEATS]`: a causal prompt of `LEN` tokens attending to its own
//!   keys/values, the prefill's attention half without the model around it;
//! - `attention_probe decode BATCH CONTEXT [REPEATS]`: a decode step of `BATCH` sequences (one
//!   query each, projections included) attending to `CONTEXT` cached keys/values. The step
//!   cycles through 30 layers' caches, as a model's step does, so that they come from memory and
//!   not from the last-level cache; it prints the cache's read rate.
//!
//! On the selected backend.
use std::time::Instant;

use burn::tensor::{Distribution, Tensor};
use kv_routing::{AttentionMask, RotaryEmbeddingConfig, StochasticKvAttentionConfig};
use kv_routing_backend::{device, Backend, NAME};
use kv_routing_benches::sync;

/// Layers whose caches a decode step reads, as in SmolLM2-135M.
const LAYERS: usize = 30;

fn main() {
    // Freed activations kept for reuse (an opt-in of programs; docs/backends.md).
    kv_routing_backend::retain_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: usize| {
        args.get(i)
            .map_or(default, |a| a.parse().expect("a number"))
    };
    let device = device();
    let attention = StochasticKvAttentionConfig::new(576, 9)
        .with_n_kv_heads(Some(3))
        .init::<Backend>(&device)
        .unwrap();
    let decode = args.first().map(String::as_str) == Some("decode");
    let (batch, context, repeats) = if decode {
        (number(1, 8), number(2, 1024), number(3, 300))
    } else {
        (1, number(0, 512), number(1, 10))
    };
    let query_len = if decode { 1 } else { context };
    let rope = RotaryEmbeddingConfig::new(64, context + 1)
        .init::<Backend>(&device)
        .unwrap();
    let angles = |positions: Vec<usize>, len: usize| {
        rope.angles(&positions, batch, len)
            .unwrap()
            .for_heads(&[9, 3])
    };
    let context_angles = angles((0..batch).flat_map(|_| 0..context).collect(), context);
    let step_angles = if decode {
        angles(vec![context - 1; batch], 1)
    } else {
        context_angles.clone()
    };
    let random =
        |len| Tensor::<Backend, 3>::random([batch, len, 576], Distribution::Default, &device);
    let caches: Vec<_> = (0..if decode { LAYERS } else { 1 })
        .map(|_| {
            attention
                .project_kv(random(context), &context_angles)
                .unwrap()
        })
        .collect();
    let x = random(query_len);
    let mut times = Vec::new();
    for step in 0..=repeats {
        let start = Instant::now();
        sync(
            attention
                .attend(
                    x.clone(),
                    &caches[step % caches.len()],
                    &step_angles,
                    &AttentionMask::Causal,
                )
                .unwrap(),
        );
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.remove(0);
    times.sort_by(f64::total_cmp);
    let (min, median, max) = (times[0], times[times.len() / 2], times[times.len() - 1]);
    if decode {
        // Keys and values, f32.
        let cache_bytes = (2 * batch * 3 * context * 64 * 4) as f64;
        println!(
            "{NAME} decode attention, batch {batch}, context {context}: min {min:.3} median \
             {median:.3} max {max:.3} ms ({:.1} GB/s of cache at the median)",
            cache_bytes / median / 1e6
        );
    } else {
        println!(
            "{NAME} attention of {context} tokens: min {min:.2} median {median:.2} max {max:.2} ms"
        );
    }
}
