//! Backend results against the f64 oracle: the attention module alone and the whole model under
//! every kind of route.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use kv_routing::{
    reinit_seeded, AttentionMask, CachePlan, RopeScaling, RotaryEmbeddingConfig, Route,
    RoutedTransformer, RoutedTransformerConfig, StochasticKvAttentionConfig, StochasticRouter,
};

use crate::oracle::{OracleAttention, OracleModel};
use crate::support::{
    assert_close, logits_to_host, max_abs_diff, random_tokens, randomize_vectors, tiny_config,
    tiny_model, to_host, tolerance, Tolerance,
};

/// Every route kind the suite exercises on a 6-layer model.
pub fn route_kinds(n_layers: usize) -> Vec<(String, Route)> {
    let mut routes = vec![(
        "full".to_string(),
        CachePlan::full(n_layers).unwrap().route(),
    )];
    for k in 2..=4 {
        routes.push((
            format!("every {k}th"),
            CachePlan::every_kth(n_layers, k).unwrap().route(),
        ));
    }
    routes.push((
        "explicit {0, 1, 4}".into(),
        CachePlan::new(n_layers, [0, 1, 4]).unwrap().route(),
    ));
    let router = StochasticRouter::new(n_layers, 0.5, 3).unwrap();
    for step in [0, 1, 5] {
        routes.push((
            format!("sampled p=0.5 step {step}"),
            router.route_for_step(step),
        ));
    }
    let always = StochasticRouter::new(n_layers, 1.0, 11).unwrap();
    routes.push(("sampled p=1 step 0".into(), always.route_for_step(0)));
    routes
}

/// Attention with keys/values from another module matches the oracle for MHA, GQA and MQA, for
/// a full causal pass, a chunk of queries fewer than keys (bottom-right causal alignment), and a
/// single decode query; and for prompts long enough to take the multi-token path of a backend
/// (flex's parallel attention: several query blocks, a chunk after a history).
pub fn attention_module_matches_oracle<B: Backend>(device: &B::Device) {
    let tolerance = tolerance::<B>(device);
    let (batch, d_model) = (2, 32);
    for (seq, q_lens, n_kv_heads) in [
        (7, vec![7, 3, 1], 4),
        (7, vec![7, 3, 1], 2),
        (7, vec![7, 3, 1], 1),
        (150, vec![150, 70], 2),
    ] {
        let config = StochasticKvAttentionConfig::new(d_model, 4).with_n_kv_heads(Some(n_kv_heads));
        let donor = reinit_seeded(config.init::<B>(device).unwrap(), 1, 0.2).unwrap();
        let reader = reinit_seeded(config.init::<B>(device).unwrap(), 2, 0.2).unwrap();
        let rope = RotaryEmbeddingConfig::new(8, seq)
            .init::<B>(device)
            .unwrap();
        let donor_oracle = OracleAttention::from_module(&donor, 10000.0);
        let reader_oracle = OracleAttention::from_module(&reader, 10000.0);

        let values = |seed| -> Vec<f64> {
            random_tokens(seed, batch * seq * d_model, 1000)
                .iter()
                .map(|&t| t as f64 / 500.0 - 1.0)
                .collect()
        };
        let (donor_input, reader_input) = (values(10), values(11));
        let tensor = |v: &[f64]| {
            Tensor::<B, 3>::from_data(TensorData::new(v.to_vec(), [batch, seq, d_model]), device)
        };
        let positions: Vec<usize> = (0..batch).flat_map(|_| 0..seq).collect();
        let kv = donor
            .project_kv(
                tensor(&donor_input),
                &rope.angles(&positions, batch, seq).unwrap(),
            )
            .unwrap();

        for q_len in q_lens {
            let start = seq - q_len;
            let query_rows: Vec<f64> = (0..batch)
                .flat_map(|b| {
                    reader_input[(b * seq + start) * d_model..(b + 1) * seq * d_model].to_vec()
                })
                .collect();
            let query_positions: Vec<usize> = (0..batch).flat_map(|_| start..seq).collect();
            let angles = rope.angles(&query_positions, batch, q_len).unwrap();
            let query = Tensor::<B, 3>::from_data(
                TensorData::new(query_rows, [batch, q_len, d_model]),
                device,
            );
            let output = reader
                .attend(query, &kv, &angles, &AttentionMask::Causal)
                .unwrap();
            let actual = to_host(output);

            let mut expected = Vec::new();
            for b in 0..batch {
                let row = |data: &[f64], p: usize| {
                    data[(b * seq + p) * d_model..(b * seq + p + 1) * d_model].to_vec()
                };
                let kvs: Vec<(Vec<f64>, Vec<f64>)> = (0..seq)
                    .map(|p| donor_oracle.key_value(&row(&donor_input, p), p))
                    .collect();
                for p in start..seq {
                    let keys: Vec<&[f64]> = kvs[..=p].iter().map(|kv| kv.0.as_slice()).collect();
                    let values: Vec<&[f64]> = kvs[..=p].iter().map(|kv| kv.1.as_slice()).collect();
                    expected.extend(reader_oracle.attend(
                        &row(&reader_input, p),
                        p,
                        &keys,
                        &values,
                    ));
                }
            }
            assert_close(
                &actual,
                &expected,
                tolerance,
                &format!("attention, {n_kv_heads} kv heads, {q_len} queries over {seq} keys"),
            );
        }
    }
}

/// Full-model logits match the oracle for every route kind and MHA/GQA/MQA, batch of 2.
pub fn model_logits_match_oracle_for_every_route<B: Backend>(device: &B::Device) {
    let tolerance = tolerance::<B>(device);
    for n_kv_heads in [4, 2, 1] {
        let config = tiny_config(n_kv_heads);
        let model = tiny_model::<B>(&config, device);
        let oracle = OracleModel::from_model(&model, &config);
        let batch = vec![
            random_tokens(1, 12, config.vocab_size),
            random_tokens(2, 12, config.vocab_size),
        ];
        assert_every_route_matches_oracle(
            &model,
            &oracle,
            &batch,
            tolerance,
            &format!("{n_kv_heads} kv heads"),
        );
    }
}

/// Logits of `batch` under every route kind equal the oracle's, sequence by sequence.
pub fn assert_every_route_matches_oracle<B: Backend>(
    model: &RoutedTransformer<B>,
    oracle: &OracleModel,
    batch: &[Vec<u32>],
    tolerance: Tolerance,
    context: &str,
) {
    for (name, route) in route_kinds(model.n_layers()) {
        let logits = logits_to_host(model.forward_tokens(batch, &route).unwrap());
        for (b, tokens) in batch.iter().enumerate() {
            for (p, row) in oracle.logits(tokens, &route).iter().enumerate() {
                assert_close(
                    &logits[b][p],
                    row,
                    tolerance,
                    &format!("{context}, route {name} {route}, sequence {b}, position {p}"),
                );
            }
        }
    }
}

/// The architecture variants of pretrained families match the oracle under every route: q/k/v
/// and output biases (Llama with `attention_bias`, Qwen2), per-head q/k norms (Qwen3), a tied LM
/// head, a head size other than `d_model / n_heads`, and scaled rotary frequencies (Llama 3.1's
/// rule with wavelengths on both sides of its band, and linear). Biases and norm gains are
/// random, so a dropped or misplaced one shows.
pub fn model_variants_match_oracle<B: Backend>(device: &B::Device) {
    let tolerance = tolerance::<B>(device);
    let llama3 = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 16,
    };
    let variants: Vec<(&str, RoutedTransformerConfig)> = vec![
        (
            "qkv+output bias, llama3 rope",
            tiny_config(2)
                .with_qkv_bias(true)
                .with_output_bias(true)
                .with_rope_scaling(Some(llama3)),
        ),
        (
            "qkv bias, tied head (Qwen2-like)",
            tiny_config(2).with_qkv_bias(true).with_tie_embeddings(true),
        ),
        (
            "qk norm, head_dim 12, linear rope (Qwen3-like)",
            tiny_config(1)
                .with_qk_norm(true)
                .with_head_dim(Some(12))
                .with_rope_scaling(Some(RopeScaling::Linear { factor: 4.0 })),
        ),
    ];
    for (variant, config) in variants {
        let model = randomize_vectors(tiny_model::<B>(&config, device), 7);
        let oracle = OracleModel::from_model(&model, &config);
        let batch = vec![
            random_tokens(3, 13, config.vocab_size),
            random_tokens(4, 13, config.vocab_size),
        ];
        assert_every_route_matches_oracle(&model, &oracle, &batch, tolerance, variant);
        // Cached prefill and decode of the variant agree with the oracle too.
        let route = CachePlan::every_kth(config.n_layers, 2).unwrap().route();
        let mut cache = model.new_cache(1, 16, route.clone()).unwrap();
        let tokens = &batch[0];
        let expected = oracle.logits(tokens, &route);
        let prefill = logits_to_host(
            model
                .forward_cached(&[tokens[..9].to_vec()], &mut cache)
                .unwrap(),
        );
        for p in 0..9 {
            assert_close(
                &prefill[0][p],
                &expected[p],
                tolerance,
                &format!("{variant}, cached prefill position {p}"),
            );
        }
        for p in 9..tokens.len() {
            let step = logits_to_host(
                model
                    .forward_cached(&[vec![tokens[p]]], &mut cache)
                    .unwrap(),
            );
            assert_close(
                &step[0][0],
                &expected[p],
                tolerance,
                &format!("{variant}, cached decode position {p}"),
            );
        }
    }
}

/// A batch of sequences of different lengths: each sequence's logits equal the oracle's for that
/// sequence alone (padding never leaks into attention).
pub fn padded_batch_matches_oracle<B: Backend>(device: &B::Device) {
    let tolerance = tolerance::<B>(device);
    let config = tiny_config(2);
    let model = tiny_model::<B>(&config, device);
    let oracle = OracleModel::from_model(&model, &config);
    let batch: Vec<Vec<u32>> = [9, 3, 14, 1]
        .iter()
        .enumerate()
        .map(|(i, &n)| random_tokens(20 + i as u64, n, config.vocab_size))
        .collect();
    assert_every_route_matches_oracle(
        &model,
        &oracle,
        &batch,
        tolerance,
        "padded batch of lengths 9, 3, 14, 1",
    );
}

/// Guards the suite against vacuous passes: different routes give clearly different logits, so
/// a model that ignored its route would fail the oracle tests.
pub fn routes_change_the_logits<B: Backend>(device: &B::Device) {
    let config = tiny_config(4);
    let model = tiny_model::<B>(&config, device);
    let tokens = vec![random_tokens(5, 12, config.vocab_size)];
    let full = to_host(
        model
            .forward_tokens(&tokens, &CachePlan::full(6).unwrap().route())
            .unwrap(),
    );
    for k in 2..=4 {
        let shared = to_host(
            model
                .forward_tokens(&tokens, &CachePlan::every_kth(6, k).unwrap().route())
                .unwrap(),
        );
        let difference = max_abs_diff(&full, &shared);
        assert!(
            difference > 1e-2,
            "every {k}th plan changed logits by only {difference}"
        );
    }
}
