//! Models whose matrices are block-quantized ([`BlockFormat`]: llama.cpp's Q8_0 and Q4_1):
//! logits against the oracle reading the same dequantized weights under every route, cached
//! against uncached (a decode step's few rows and a prompt's many take different products on
//! backends that multiply blocks in place), and weight bytes that are the blocks'.

use burn::tensor::backend::Backend;
use kv_routing::{BlockFormat, CachePlan};

use super::cached::assert_matches_uncached;
use super::oracle_agreement::assert_every_route_matches_oracle;
use crate::oracle::OracleModel;
use crate::support::{random_tokens, tiny_config, tiny_model, tolerance};

/// Under every route kind, a block model's logits equal the oracle's on its dequantized
/// weights, and its cached steps equal its uncached pass.
pub fn block_weight_models_match_the_oracle_on_their_weights<B: Backend>(device: &B::Device) {
    for format in [BlockFormat::Q8_0, BlockFormat::Q4_1] {
        let config = tiny_config(2);
        let model = tiny_model::<B>(&config, device)
            .with_block_weights(format)
            .unwrap();
        // The tiny model's 32-wide projections and embedding are blocks; its 48-wide `down`
        // stays in floats: both kinds in one model.
        assert!(model.blocks[0].attention.query.blocks.is_some());
        assert!(model.embedding.blocks.is_some());
        assert!(model.blocks[0].mlp.down.blocks.is_none());
        let oracle = OracleModel::from_model(&model, &config);
        let batch = vec![
            random_tokens(1, 12, config.vocab_size),
            random_tokens(2, 9, config.vocab_size),
        ];
        assert_every_route_matches_oracle(
            &model,
            &oracle,
            &batch[..1],
            tolerance::<B>(device),
            &format!("{format}"),
        );
        for (name, plan) in [
            ("full", CachePlan::full(6).unwrap()),
            ("every:2", CachePlan::every_kth(6, 2).unwrap()),
        ] {
            assert_matches_uncached(
                &model,
                &plan.route(),
                &batch,
                &[5, 1, 1, 5],
                &format!("{format}, cached under {name}"),
            );
        }
    }
}

/// A block model's weights take the blocks' bytes: 34 bytes per 32 values in Q8_0, 20 in Q4_1,
/// plus the matrices that stay in floats and the vectors, as long as nothing has asked for a
/// float weight (on every backend: a forward pass builds them only where blocks are not
/// multiplied in place).
pub fn block_weight_bytes_are_the_blocks<B: Backend>(device: &B::Device) {
    let config = tiny_config(2);
    let float = tiny_model::<B>(&config, device);
    let float_bytes = float.weight_bytes();
    let q8 = tiny_model::<B>(&config, device)
        .with_block_weights(BlockFormat::Q8_0)
        .unwrap();
    let q4 = tiny_model::<B>(&config, device)
        .with_block_weights(BlockFormat::Q4_1)
        .unwrap();
    let element = float.float_bytes();
    // Block matrices: the embedding [37, 32], the LM head [37, 32] when untied, and per layer
    // q, k, v, o, gate, up.
    let head = if config.tie_embeddings { 0 } else { 37 * 32 };
    let blocks_values: usize = 37 * 32 + head + 6 * (32 * 32 + 2 * 32 * 16 + 32 * 32 + 2 * 32 * 48);
    assert_eq!(
        q8.weight_bytes(),
        float_bytes - blocks_values * element + blocks_values / 32 * 34,
        "q8_0"
    );
    assert_eq!(
        q4.weight_bytes(),
        float_bytes - blocks_values * element + blocks_values / 32 * 20,
        "q4_1"
    );
}
