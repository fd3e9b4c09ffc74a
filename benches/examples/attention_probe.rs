//! Times one SmolLM2-shaped attention layer (d_model 576, 9 query / 3 key-value heads of 64)
//! attending a causal prompt of `LEN` tokens to its own keys/values, the prefill's attention
//! half without the model around it:
//! `attention_probe LEN [REPEATS]`, on the selected backend.
use std::time::Instant;

use burn::tensor::{Distribution, Tensor};
use kv_routing::{AttentionMask, RotaryEmbeddingConfig, StochasticKvAttentionConfig};
use kv_routing_backend::{device, Backend, NAME};
use kv_routing_benches::sync;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let (len, repeats) = (args[0], args.get(1).copied().unwrap_or(10));
    let device = device();
    let attention = StochasticKvAttentionConfig::new(576, 9)
        .with_n_kv_heads(Some(3))
        .init::<Backend>(&device)
        .unwrap();
    let rope = RotaryEmbeddingConfig::new(64, len)
        .init::<Backend>(&device)
        .unwrap();
    let positions: Vec<usize> = (0..len).collect();
    let angles = rope.angles(&positions, 1, len).unwrap().for_heads(&[9, 3]);
    let x = Tensor::<Backend, 3>::random([1, len, 576], Distribution::Default, &device);
    let kv = attention.project_kv(x.clone(), &angles).unwrap();
    let mut times = Vec::new();
    for _ in 0..=repeats {
        let start = Instant::now();
        sync(
            attention
                .attend(x.clone(), &kv, &angles, &AttentionMask::Causal)
                .unwrap(),
        );
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.remove(0);
    times.sort_by(f64::total_cmp);
    println!(
        "{NAME} attention of {len} tokens: min {:.2} median {:.2} max {:.2} ms",
        times[0],
        times[times.len() / 2],
        times[times.len() - 1]
    );
}
