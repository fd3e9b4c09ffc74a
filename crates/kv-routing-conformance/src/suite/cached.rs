//! Cached generation against the uncached forward under the same route: prefill + decode,
//! token by token from an empty cache, chunked prefill (queries fewer than keys), and a batch
//! of prompts of different lengths. Shared routes make these catch rotary-offset and
//! mask-alignment bugs.

use burn::tensor::backend::Backend;
use kv_routing::{CachePlan, GenerationConfig, KvCacheManager, Route, RoutedTransformer};

use super::oracle_agreement::route_kinds;
use crate::support::{
    assert_close, logits_to_host, random_tokens, tiny_config, tiny_model, tolerance,
};

/// Feeds `steps[s][b]` (the tokens sequence `b` brings to step `s`) through the cache and
/// returns every sequence's logits rows in token order.
pub fn feed_cached<B: Backend>(
    model: &RoutedTransformer<B>,
    cache: &mut KvCacheManager<B>,
    steps: &[Vec<Vec<u32>>],
) -> Vec<Vec<Vec<f64>>> {
    let mut rows = vec![Vec::new(); steps[0].len()];
    for step in steps {
        let logits = logits_to_host(model.forward_cached(step, cache).unwrap());
        for (b, tokens) in step.iter().enumerate() {
            rows[b].extend(logits[b][..tokens.len()].iter().cloned());
        }
    }
    rows
}

/// Splits each sequence into consecutive chunks of the given sizes (a sequence that runs out
/// brings fewer or no tokens).
pub fn chunk_steps(sequences: &[Vec<u32>], sizes: &[usize]) -> Vec<Vec<Vec<u32>>> {
    let mut offsets = vec![0; sequences.len()];
    sizes
        .iter()
        .map(|&size| {
            sequences
                .iter()
                .zip(offsets.iter_mut())
                .map(|(tokens, offset)| {
                    let end = (*offset + size).min(tokens.len());
                    let chunk = tokens[*offset..end].to_vec();
                    *offset = end;
                    chunk
                })
                .collect()
        })
        .collect()
}

pub fn assert_matches_uncached<B: Backend>(
    model: &RoutedTransformer<B>,
    route: &Route,
    sequences: &[Vec<u32>],
    sizes: &[usize],
    context: &str,
) {
    let tolerance = tolerance::<B>(&model.device());
    let capacity = sizes.iter().sum();
    let mut cache = model
        .new_cache(sequences.len(), capacity, route.clone())
        .unwrap();
    let cached = feed_cached(model, &mut cache, &chunk_steps(sequences, sizes));
    for (b, tokens) in sequences.iter().enumerate() {
        let uncached = logits_to_host(
            model
                .forward_tokens(std::slice::from_ref(tokens), route)
                .unwrap(),
        );
        assert_eq!(
            cached[b].len(),
            tokens.len(),
            "{context}: rows of sequence {b}"
        );
        for (p, row) in uncached[0].iter().enumerate() {
            assert_close(
                &cached[b][p],
                row,
                tolerance,
                &format!("{context}, route {route}, sequence {b}, position {p}"),
            );
        }
    }
}

/// Prefill of 5 tokens then 7 single-token decode steps equals the uncached forward, for every
/// route kind.
pub fn cached_prefill_then_decode_matches_uncached<B: Backend>(device: &B::Device) {
    let config = tiny_config(2);
    let model = tiny_model::<B>(&config, device);
    let sequences = vec![random_tokens(1, 12, 37), random_tokens(2, 12, 37)];
    for (name, route) in route_kinds(config.n_layers) {
        assert_matches_uncached(
            &model,
            &route,
            &sequences,
            &[5, 1, 1, 1, 1, 1, 1, 1],
            &format!("prefill+decode, {name}"),
        );
    }
}

/// Token by token from an empty cache equals the uncached forward, for every route kind (MQA).
pub fn token_by_token_from_empty_cache_matches_uncached<B: Backend>(device: &B::Device) {
    let config = tiny_config(1);
    let model = tiny_model::<B>(&config, device);
    let sequences = vec![random_tokens(3, 10, 37)];
    for (name, route) in route_kinds(config.n_layers) {
        assert_matches_uncached(
            &model,
            &route,
            &sequences,
            &[1; 10],
            &format!("token by token, {name}"),
        );
    }
}

/// Chunks of several queries after a history (queries fewer than keys) equal the uncached
/// forward: the causal mask must be aligned bottom-right.
pub fn chunked_prefill_matches_uncached<B: Backend>(device: &B::Device) {
    let config = tiny_config(4);
    let model = tiny_model::<B>(&config, device);
    let sequences = vec![random_tokens(4, 13, 37), random_tokens(5, 13, 37)];
    for (name, route) in route_kinds(config.n_layers) {
        assert_matches_uncached(
            &model,
            &route,
            &sequences,
            &[4, 3, 1, 5],
            &format!("chunked prefill, {name}"),
        );
    }
}

/// Prompts of different lengths prefilled together, then decoded together (sequences finishing
/// early bring no tokens), equal each sequence run alone uncached.
pub fn ragged_batch_cached_matches_uncached<B: Backend>(device: &B::Device) {
    let config = tiny_config(2);
    let model = tiny_model::<B>(&config, device);
    let tolerance = tolerance::<B>(device);
    let prompts = [6usize, 2, 9];
    let continuations = [5usize, 8, 2];
    let sequences: Vec<Vec<u32>> = (0..3)
        .map(|b| random_tokens(30 + b as u64, prompts[b] + continuations[b], 37))
        .collect();
    for (name, route) in route_kinds(config.n_layers) {
        let mut steps = vec![(0..3)
            .map(|b| sequences[b][..prompts[b]].to_vec())
            .collect::<Vec<_>>()];
        for i in 0..8 {
            steps.push(
                (0..3)
                    .map(|b| {
                        sequences[b]
                            .get(prompts[b] + i)
                            .map(|&t| vec![t])
                            .unwrap_or_default()
                    })
                    .collect(),
            );
        }
        let mut cache = model.new_cache(3, 9 + 8, route.clone()).unwrap();
        let cached = feed_cached(&model, &mut cache, &steps);
        assert_eq!(cache.sequence_lengths(), &[11, 10, 11]);
        for (b, tokens) in sequences.iter().enumerate() {
            let alone = logits_to_host(
                model
                    .forward_tokens(std::slice::from_ref(tokens), &route)
                    .unwrap(),
            );
            for (p, row) in alone[0].iter().enumerate() {
                assert_close(
                    &cached[b][p],
                    row,
                    tolerance,
                    &format!("ragged batch, route {name} {route}, sequence {b}, position {p}"),
                );
            }
        }
    }
}

/// Greedy `generate` under a shared plan produces exactly the tokens obtained by repeatedly
/// taking the argmax of the uncached forward, and stops at the stop token.
pub fn greedy_generation_matches_uncached_argmax<B: Backend>(device: &B::Device) {
    let config = tiny_config(2);
    let model = tiny_model::<B>(&config, device);
    let route = CachePlan::every_kth(config.n_layers, 2).unwrap().route();
    let prompts = vec![random_tokens(40, 5, 37), random_tokens(41, 3, 37)];
    let generation = model
        .generate(
            &prompts,
            &route,
            &GenerationConfig {
                max_new_tokens: 6,
                ..Default::default()
            },
        )
        .unwrap();
    for (b, prompt) in prompts.iter().enumerate() {
        let mut tokens = prompt.clone();
        for _ in 0..6 {
            let logits = logits_to_host(
                model
                    .forward_tokens(std::slice::from_ref(&tokens), &route)
                    .unwrap(),
            );
            let last = logits[0].last().unwrap();
            let argmax =
                (0..last.len()).fold(0, |best, i| if last[i] > last[best] { i } else { best });
            tokens.push(argmax as u32);
        }
        assert_eq!(generation.tokens[b], tokens[prompt.len()..], "sequence {b}");
    }
    // The first pick ends the prefill; each further token took one timed decode step.
    assert_eq!(generation.decode_steps, 5);
    assert!(generation.prefill_seconds > 0.0 && generation.decode_seconds > 0.0);
    // Any of several stop tokens ends a sequence, whichever comes first.
    let stops = vec![generation.tokens[0][4], generation.tokens[0][2]];
    let stopped = model
        .generate(
            &prompts[..1],
            &route,
            &GenerationConfig {
                max_new_tokens: 6,
                stop_tokens: stops.clone(),
                ..Default::default()
            },
        )
        .unwrap();
    let first_stop = generation.tokens[0]
        .iter()
        .position(|t| stops.contains(t))
        .unwrap();
    assert_eq!(stopped.tokens[0], generation.tokens[0][..=first_stop]);
    assert_eq!(stopped.decode_steps, first_stop);
}
