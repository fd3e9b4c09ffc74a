//! Token selection on the device: greedy picks are an argmax reduction whose ids alone come
//! back, so every backend's reduction must pick what a host scan of the same logits picks —
//! including rows long enough to take a backend's vectorized path. Top-k sampling skips
//! finished rows without drawing from the random stream.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use kv_routing::{greedy_tokens, KvRoutingError, Sampler};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Distinct random logits (no exact ties: a GPU reduction may break those differently), with
/// each row's maximum planted at a chosen place.
fn logits_with_maxima(vocab: usize, maxima: &[usize], seed: u64) -> Vec<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    maxima
        .iter()
        .map(|&at| {
            let mut row: Vec<f32> = (0..vocab)
                .map(|i| rng.random::<f32>() * 20.0 - 10.0 + i as f32 * 1e-6)
                .collect();
            row[at] = 30.0;
            row
        })
        .collect()
}

fn to_device<B: Backend>(rows: &[Vec<f32>], device: &B::Device) -> Tensor<B, 2> {
    let shape = [rows.len(), rows[0].len()];
    let values: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Device argmax = host scan, for small and SmolLM2-sized vocabularies.
pub fn greedy_tokens_match_the_host_argmax<B: Backend>(device: &B::Device) {
    // A small vocabulary and one of SmolLM2's size (49152), maxima at both ends and inside.
    for (vocab, seed) in [(37, 1), (49_152, 2)] {
        let maxima = [0, vocab - 1, vocab / 3, 7];
        let rows = logits_with_maxima(vocab, &maxima, seed);
        let ids = greedy_tokens(to_device::<B>(&rows, device)).unwrap();
        let expected: Vec<u32> = maxima.iter().map(|&m| m as u32).collect();
        assert_eq!(ids, expected, "vocabulary {vocab}");
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let host: Vec<u32> = rows
            .iter()
            .map(|row| Sampler::Greedy.sample(row, &mut rng).unwrap())
            .collect();
        assert_eq!(
            ids, host,
            "vocabulary {vocab}: device and host greedy disagree"
        );
    }
}

/// Skipped rows get 0 and leave the random stream where it was; a wrong mask length is an
/// error.
pub fn top_k_skips_finished_rows_without_drawing<B: Backend>(device: &B::Device) {
    let rows = logits_with_maxima(64, &[3, 5, 9], 3);
    let sampler = Sampler::TopK {
        k: 8,
        temperature: 1.0,
    };
    let mut skipping = ChaCha8Rng::seed_from_u64(4);
    let picks = sampler
        .pick(
            to_device::<B>(&rows, device),
            &[true, false, true],
            &mut skipping,
        )
        .unwrap();
    let mut alone = ChaCha8Rng::seed_from_u64(4);
    let only = sampler.sample(&rows[1], &mut alone).unwrap();
    assert_eq!(picks, vec![0, only, 0]);
    // The skipped rows drew nothing: both streams are at the same place.
    assert_eq!(skipping.random::<u64>(), alone.random::<u64>());

    let wrong = sampler.pick(to_device::<B>(&rows, device), &[false], &mut skipping);
    assert!(
        matches!(wrong, Err(KvRoutingError::ShapeMismatch { .. })),
        "{wrong:?}"
    );
}
