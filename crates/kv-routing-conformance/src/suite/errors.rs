//! Bad input is a typed error, never a panic inside Burn, and a failed cache step changes
//! nothing. The one input that is no error is an id outside the vocabulary in a tensor already
//! on the device, which is not read back to be checked: its sequence's logits are NaN.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use kv_routing::{
    AttentionMask, CachePlan, GenerationConfig, KeyValue, KvRoutingError, RotaryEmbeddingConfig,
    Route, RoutedTransformerConfig, Sampler, StochasticKvAttentionConfig,
};

use super::cached::{chunk_steps, feed_cached};
use crate::support::{
    assert_close, logits_to_host, random_tokens, tiny_config, tiny_model, tolerance,
};

/// Capacity overflow, batch mismatch, out-of-vocabulary tokens and empty sequences are errors
/// that leave the cache exactly as it was; generation then continues correctly.
pub fn failed_cache_steps_change_nothing<B: Backend>(device: &B::Device) {
    let config = tiny_config(2);
    let model = tiny_model::<B>(&config, device);
    let route = CachePlan::every_kth(6, 3).unwrap().route();
    let tokens = random_tokens(3, 8, 37);
    let mut cache = model.new_cache(1, 8, route.clone()).unwrap();
    let mut rows = feed_cached(
        &model,
        &mut cache,
        &chunk_steps(std::slice::from_ref(&tokens), &[6]),
    );

    let overflow = model
        .forward_cached(&[vec![1, 2, 3]], &mut cache)
        .unwrap_err();
    assert_eq!(
        overflow,
        KvRoutingError::CapacityExceeded {
            used: 6,
            requested: 3,
            capacity: 8
        }
    );
    assert!(matches!(
        model.forward_cached(&[vec![1], vec![2]], &mut cache),
        Err(KvRoutingError::ShapeMismatch { .. })
    ));
    assert_eq!(
        model.forward_cached(&[vec![37]], &mut cache).unwrap_err(),
        KvRoutingError::TokenOutOfRange {
            token: 37,
            sequence: 0,
            position: 0,
            vocab_size: 37
        }
    );
    assert!(matches!(
        model.forward_cached(&[vec![]], &mut cache),
        Err(KvRoutingError::InvalidLengths(_))
    ));
    assert_eq!(cache.len(), 6);
    assert_eq!(cache.sequence_lengths(), &[6]);

    rows[0].extend(
        feed_cached(
            &model,
            &mut cache,
            &chunk_steps(&[tokens[6..].to_vec()], &[1, 1]),
        )
        .remove(0),
    );
    let uncached = logits_to_host(model.forward_tokens(&[tokens], &route).unwrap());
    for (p, row) in uncached[0].iter().enumerate() {
        assert_close(
            &rows[0][p],
            row,
            tolerance::<B>(device),
            &format!("after failed steps, position {p}"),
        );
    }
    assert!(matches!(
        model.forward_cached(&[vec![1]], &mut cache),
        Err(KvRoutingError::CapacityExceeded {
            used: 8,
            requested: 1,
            capacity: 8
        })
    ));
}

/// Model inputs and configurations that do not fit are typed errors naming what is wrong.
pub fn bad_model_inputs_are_typed_errors<B: Backend>(device: &B::Device) {
    let config = tiny_config(2);
    let model = tiny_model::<B>(&config, device);
    let full = CachePlan::full(6).unwrap().route();
    assert_eq!(
        model.forward_tokens(&[vec![0; 65]], &full).unwrap_err(),
        KvRoutingError::SequenceTooLong {
            sequence: 0,
            position: 64,
            max_seq_len: 64
        }
    );
    assert_eq!(
        model
            .forward_tokens(&[vec![1, 2]], &Route::identity(4).unwrap())
            .unwrap_err(),
        KvRoutingError::LayerCountMismatch {
            route_layers: 4,
            model_layers: 6
        }
    );
    assert!(model.new_cache(1, 8, Route::identity(7).unwrap()).is_err());
    assert!(
        matches!(model.forward_tokens(&[vec![1], vec![]], &full), Err(KvRoutingError::InvalidLengths(m)) if m.contains("sequence 1"))
    );
    assert!(matches!(
        model.forward_tokens(&[], &full),
        Err(KvRoutingError::InvalidLengths(_))
    ));

    // The host check callers run where they build device ids: the typed error that
    // `forward` (which does not read ids back) cannot give.
    assert_eq!(
        model.check_tokens(&[vec![1, 2], vec![3, 36, 37, 38]]),
        Err(KvRoutingError::TokenOutOfRange {
            token: 37,
            sequence: 1,
            position: 2,
            vocab_size: 37
        })
    );
    assert_eq!(model.check_tokens(&[vec![0, 36], vec![]]), Ok(()));
    let ids = |rows: &[Vec<i64>]| {
        let flat: Vec<i64> = rows.iter().flatten().copied().collect();
        let shape = [rows.len(), rows.first().map_or(0, Vec::len)];
        Tensor::<B, 2, Int>::from_data(TensorData::new(flat, shape), device)
    };
    assert!(matches!(
        model.forward(ids(&[]), &full),
        Err(KvRoutingError::InvalidLengths(_))
    ));
    assert!(
        matches!(model.new_cache(0, 8, full.clone()), Err(KvRoutingError::InvalidConfig(m)) if m.contains("batch_size"))
    );
    assert!(
        matches!(model.new_cache(1, 0, full.clone()), Err(KvRoutingError::InvalidConfig(m)) if m.contains("capacity"))
    );

    let mut long_cache = model.new_cache(1, 80, full.clone()).unwrap();
    assert!(matches!(
        model.forward_cached(&[vec![0; 70]], &mut long_cache),
        Err(KvRoutingError::SequenceTooLong { position: 64, .. })
    ));
    assert!(long_cache.is_empty());
    // A generation that cannot finish inside the context fails before its prefill: 10 prompt
    // tokens and 56 new ones reach position 64 of 64.
    let too_long = GenerationConfig {
        max_new_tokens: 56,
        ..Default::default()
    };
    assert!(matches!(
        model.generate(&[vec![1; 10]], &full, &too_long),
        Err(KvRoutingError::SequenceTooLong {
            sequence: 0,
            position: 64,
            max_seq_len: 64
        })
    ));

    let other = RoutedTransformerConfig::new(37, 32, 6, 4, 48)
        .init::<B>(device)
        .unwrap();
    let mut foreign_cache = other.new_cache(1, 8, full.clone()).unwrap();
    assert!(matches!(
        model.forward_cached(&[vec![1]], &mut foreign_cache),
        Err(KvRoutingError::ShapeMismatch { .. })
    ));

    let sampler = GenerationConfig {
        sampler: Sampler::TopK {
            k: 0,
            temperature: 1.0,
        },
        ..Default::default()
    };
    assert!(matches!(
        model.generate(&[vec![1]], &full, &sampler),
        Err(KvRoutingError::InvalidConfig(_))
    ));

    let invalid = [
        tiny_config(3),
        RoutedTransformerConfig::new(37, 30, 2, 4, 48),
        RoutedTransformerConfig::new(37, 12, 2, 4, 48),
        RoutedTransformerConfig::new(0, 32, 2, 4, 48),
        RoutedTransformerConfig::new(37, 32, 2, 4, 48).with_norm_eps(0.0),
        // Rotary tables past MAX_TABLE_VALUES (a corrupted context length), and one whose
        // size overflows: refused before allocating, not an abort or a capacity panic.
        RoutedTransformerConfig::new(37, 32, 2, 4, 48).with_max_seq_len(1 << 40),
        RoutedTransformerConfig::new(37, 32, 2, 4, 48).with_max_seq_len(usize::MAX / 2),
    ];
    for config in invalid {
        assert!(
            matches!(
                config.init::<B>(device),
                Err(KvRoutingError::InvalidConfig(_))
            ),
            "{config:?}"
        );
    }
}

/// The attention module checks the shapes handed to it instead of panicking inside Burn.
pub fn attention_rejects_mismatched_shapes<B: Backend>(device: &B::Device) {
    let attention = StochasticKvAttentionConfig::new(32, 4)
        .with_n_kv_heads(Some(2))
        .init::<B>(device)
        .unwrap();
    let rope = RotaryEmbeddingConfig::new(8, 16).init::<B>(device).unwrap();
    let angles = rope.angles(&[0, 1, 2, 0, 1, 2], 2, 3).unwrap();
    let x = Tensor::<B, 3>::zeros([2, 3, 32], device);
    let wrong_heads = KeyValue::new(
        Tensor::zeros([2, 4, 3, 8], device),
        Tensor::zeros([2, 4, 3, 8], device),
    );
    let too_short = KeyValue::new(
        Tensor::zeros([2, 2, 2, 8], device),
        Tensor::zeros([2, 2, 2, 8], device),
    );
    for kv in [wrong_heads, too_short] {
        assert!(matches!(
            attention.attend(x.clone(), &kv, &angles, &AttentionMask::Causal),
            Err(KvRoutingError::ShapeMismatch { .. })
        ));
    }
    assert!(attention
        .project_kv(Tensor::zeros([2, 3, 31], device), &angles)
        .is_err());
    assert!(attention
        .project_kv(Tensor::zeros([2, 4, 32], device), &angles)
        .is_err());
    assert!(matches!(
        rope.angles(&[0, 16], 1, 2),
        Err(KvRoutingError::SequenceTooLong { position: 16, .. })
    ));
}

/// Token ids as a device tensor give the logits host lists give. They are not read back to be
/// checked (a read-back would synchronize with the device on every forward pass, every
/// training step), so an id outside the vocabulary is no error there: it makes every logit of
/// its sequence NaN, never an out-of-bounds gather or a panic, and leaves the other sequences'
/// logits as they were. Before ids stopped being read back, the bad ids here were errors.
pub fn device_ids_are_not_read_back<B: Backend>(device: &B::Device) {
    let config = tiny_config(2);
    let model = tiny_model::<B>(&config, device);
    let ids = |rows: &[Vec<i64>]| {
        let flat: Vec<i64> = rows.iter().flatten().copied().collect();
        let shape = [rows.len(), rows.first().map_or(0, Vec::len)];
        Tensor::<B, 2, Int>::from_data(TensorData::new(flat, shape), device)
    };
    let host: Vec<Vec<u32>> = (0..3).map(|b| random_tokens(40 + b, 7, 37)).collect();
    let rows: Vec<Vec<i64>> = host
        .iter()
        .map(|row| row.iter().map(|&t| t as i64).collect())
        .collect();
    let every_second = CachePlan::every_kth(6, 2).unwrap().route();
    let clean = logits_to_host(model.forward(ids(&rows), &every_second).unwrap());
    assert_close(
        &clean.concat().concat(),
        &logits_to_host(model.forward_tokens(&host, &every_second).unwrap())
            .concat()
            .concat(),
        tolerance::<B>(device),
        "tensor input vs host input",
    );
    // Just past the vocabulary, negative, far past it (within the i32 ids of GPU backends).
    for bad_id in [37, -1, 1 << 30] {
        let mut bad = rows.clone();
        bad[1][4] = bad_id;
        let logits = logits_to_host(
            model
                .forward(ids(&bad), &every_second)
                .unwrap_or_else(|e| panic!("id {bad_id}: the forward failed: {e}")),
        );
        assert!(
            logits[1].iter().flatten().all(|v| v.is_nan()),
            "id {bad_id}: the sequence holding it has a logit that is not NaN"
        );
        for sequence in [0, 2] {
            assert_close(
                &logits[sequence].concat(),
                &clean[sequence].concat(),
                tolerance::<B>(device),
                &format!("id {bad_id} in sequence 1: sequence {sequence}"),
            );
        }
    }
}
