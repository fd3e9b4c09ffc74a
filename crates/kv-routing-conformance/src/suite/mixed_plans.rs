//! Batches in which each sequence has its own plan: every sequence's logits and tokens are
//! those it gets alone under its route, and it holds exactly its route's bytes.

use burn::tensor::backend::Backend;
use kv_routing::{
    CachePlan, GenerationConfig, KvDtype, KvRoutingError, MemoryBudget, Route, StochasticRouter,
};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::oracle::{int8_round_trip, OracleModel};
use crate::support::{
    assert_close, logits_to_host, random_tokens, tiny_config, tiny_model, to_host, tolerance,
};

/// Random batches (2 to 5 sequences, routes drawn among full, every:k, explicit plans and
/// sampled routes, some shared by several sequences, prompts of 1 to 7 tokens): a prefill and
/// three decode steps (a sequence sits one out) through one mixed-plan cache give each sequence
/// the logits of the uncached pass over its tokens alone under its route; each sequence holds
/// its route's bytes; greedy generation gives each sequence its tokens alone. Mismatched
/// inputs are typed errors.
pub fn mixed_plan_batches_match_each_sequence_alone<B: Backend>(device: &B::Device) {
    let config = tiny_config(2);
    let model = tiny_model::<B>(&config, device);
    let n = config.n_layers;
    let tolerance = tolerance::<B>(device);
    let candidates = [
        CachePlan::full(n).unwrap().route(),
        CachePlan::every_kth(n, 2).unwrap().route(),
        CachePlan::every_kth(n, 3).unwrap().route(),
        CachePlan::new(n, [0, 1, 4]).unwrap().route(),
        StochasticRouter::new(n, 1.0, 9).unwrap().route_for_step(0),
    ];
    for seed in 0..2u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let batch = rng.random_range(2..=5);
        let routes: Vec<Route> = (0..batch)
            .map(|_| candidates[rng.random_range(0..candidates.len())].clone())
            .collect();
        let mut sequences: Vec<Vec<u32>> = (0..batch)
            .map(|b| random_tokens(seed * 10 + b as u64, rng.random_range(1..=7), 37))
            .collect();
        let capacity = 7 + 3;
        let mut cache = model
            .new_mixed_cache(&routes, capacity, &MemoryBudget::UNLIMITED)
            .unwrap();
        assert_eq!(cache.routes(), routes);
        let mut step: Vec<Vec<u32>> = sequences.clone();
        for decode in 0..4 {
            let logits = to_host(model.forward_mixed_last(&step, &mut cache).unwrap());
            let logits: Vec<&[f64]> = logits.chunks(37).collect();
            for (b, route) in routes.iter().enumerate() {
                if step[b].is_empty() {
                    continue;
                }
                let alone = logits_to_host(
                    model
                        .forward_tokens(std::slice::from_ref(&sequences[b]), route)
                        .unwrap(),
                );
                let expected = alone[0].last().unwrap();
                assert_close(
                    logits[b],
                    expected,
                    tolerance,
                    &format!("seed {seed}, step {decode}, sequence {b} under {route}"),
                );
            }
            // Next step: one token each, sequence 1 sitting this one out.
            step = (0..batch)
                .map(|b| {
                    if b == 1 && decode == 1 {
                        Vec::new()
                    } else {
                        random_tokens(100 + seed * 10 + (decode * batch + b) as u64, 1, 37)
                    }
                })
                .collect();
            for (sequence, new) in sequences.iter_mut().zip(&step) {
                sequence.extend(new);
            }
        }
        assert_eq!(cache.sequence_lengths().len(), batch);
        for (b, route) in routes.iter().enumerate() {
            assert_eq!(
                cache.bytes_per_sequence()[b],
                model.kv_bytes_per_token(route).unwrap() * capacity,
                "seed {seed}, sequence {b}: bytes of its route"
            );
        }
        assert_eq!(
            cache.bytes(),
            cache.bytes_per_sequence().iter().sum::<usize>()
        );

        let prompts: Vec<Vec<u32>> = (0..batch)
            .map(|b| random_tokens(50 + seed * 10 + b as u64, 1 + b, 37))
            .collect();
        let generation_config = GenerationConfig {
            max_new_tokens: 3,
            ..Default::default()
        };
        let mixed = model
            .generate_mixed(&prompts, &routes, &generation_config)
            .unwrap();
        for (b, route) in routes.iter().enumerate() {
            let alone = model
                .generate(std::slice::from_ref(&prompts[b]), route, &generation_config)
                .unwrap();
            assert_eq!(
                mixed.tokens[b], alone.tokens[0],
                "seed {seed}, sequence {b}"
            );
            // The batch's slots: its longest prompt (`batch` tokens) and the new tokens.
            assert_eq!(
                mixed.kv_bytes_per_sequence[b],
                model.kv_bytes_per_token(route).unwrap() * (batch + 3),
                "seed {seed}, sequence {b}: bytes"
            );
        }
    }

    let routes = vec![CachePlan::full(n).unwrap().route(); 2];
    let mut cache = model
        .new_mixed_cache(&routes, 4, &MemoryBudget::UNLIMITED)
        .unwrap();
    assert!(matches!(
        model.forward_mixed_last(&[vec![1]], &mut cache),
        Err(KvRoutingError::ShapeMismatch { .. })
    ));
    assert!(model
        .generate_mixed(&[vec![1]], &routes, &GenerationConfig::default())
        .is_err());
    let short = CachePlan::full(n - 1).unwrap().route();
    assert!(model
        .new_mixed_cache(&[short], 4, &MemoryBudget::UNLIMITED)
        .is_err());
    assert!(model
        .new_mixed_cache(&[], 4, &MemoryBudget::UNLIMITED)
        .is_err());
}

/// One sequence of a plan group (3 sequences, full plan; native and int8 caches) switched to
/// every:2 mid-generation: its logits from then on are the oracle's with its route changed at
/// that position, the others' stay those of the full plan; it holds every:2's bytes, the others
/// the full plan's. A switch to a layer it no longer caches fails and changes nothing.
pub fn retargeting_one_sequence_matches_the_oracle<B: Backend>(device: &B::Device) {
    let config = tiny_config(2);
    let native = tiny_model::<B>(&config, device);
    let oracle = OracleModel::from_model(&native, &config);
    let n = config.n_layers;
    let tolerance = tolerance::<B>(device);
    let full = CachePlan::full(n).unwrap().route();
    let every2 = CachePlan::every_kth(n, 2).unwrap().route();
    for dtype in [KvDtype::Native, KvDtype::Int8] {
        let model = native.clone().with_kv_dtype(dtype).unwrap();
        let block = model.kv_row_format().unwrap().scale.map(|(_, block)| block);
        let stored = |row: &[f64]| match block {
            Some(block) => int8_round_trip(row, block),
            None => row.to_vec(),
        };
        let capacity = 9;
        let mut cache = model
            .new_mixed_cache(&vec![full.clone(); 3], capacity, &MemoryBudget::UNLIMITED)
            .unwrap();
        let mut sequences: Vec<Vec<u32>> = (0..3).map(|b| random_tokens(70 + b, 4, 37)).collect();
        // The position of the first token under every:2 (fed in the second round).
        let switch_at = 4;
        let mut step = sequences.clone();
        for round in 0..5 {
            if round == 1 {
                cache.retarget_sequence(1, every2.clone()).unwrap();
                assert_eq!(cache.group_count(), 2);
                assert_eq!(
                    cache.routes(),
                    vec![full.clone(), every2.clone(), full.clone()]
                );
            }
            let logits = to_host(model.forward_mixed_last(&step, &mut cache).unwrap());
            for (b, tokens) in sequences.iter().enumerate() {
                let route_at = |p: usize| {
                    if b == 1 && p >= switch_at {
                        every2.clone()
                    } else {
                        full.clone()
                    }
                };
                let expected = oracle.logits_stored_as(tokens, route_at, &stored);
                assert_close(
                    &logits[b * 37..(b + 1) * 37],
                    expected.last().unwrap(),
                    tolerance,
                    &format!("{dtype} cache, round {round}, sequence {b}"),
                );
            }
            step = (0..3)
                .map(|b| random_tokens(80 + round * 3 + b, 1, 37))
                .collect();
            for (sequence, new) in sequences.iter_mut().zip(&step) {
                sequence.extend(new);
            }
        }
        let bytes = cache.bytes_per_sequence();
        assert_eq!(
            bytes[1],
            model.kv_bytes_per_token(&every2).unwrap() * capacity
        );
        assert_eq!(
            bytes[0],
            model.kv_bytes_per_token(&full).unwrap() * capacity
        );
        assert_eq!(bytes[2], bytes[0]);
        let before = (cache.routes(), cache.bytes(), cache.sequence_lengths());
        assert!(matches!(
            cache.retarget_sequence(1, full.clone()),
            Err(KvRoutingError::MissingKv { .. })
        ));
        assert!(cache.retarget_sequence(3, full.clone()).is_err());
        assert_eq!(
            (cache.routes(), cache.bytes(), cache.sequence_lengths()),
            before
        );
    }
}
