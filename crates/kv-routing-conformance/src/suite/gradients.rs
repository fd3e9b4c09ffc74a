//! Training under a route: gradients reach the K/V projections of source layers only.

use burn::tensor::backend::Backend;
use burn_autodiff::Autodiff;
use kv_routing::Route;

use crate::support::{random_tokens, tiny_config, tiny_model, to_host};

/// Under `src = [0, 0, 1, 3, 3, 0]` (sources 0, 1, 3) the K/V projections of layers 2, 4, 5
/// get no gradient at all (they were never computed), those of the sources get non-zero ones,
/// and every layer's query projection gets one.
pub fn gradients_reach_only_source_kv_projections<B: Backend>(device: &B::Device) {
    let config = tiny_config(2);
    let model = tiny_model::<Autodiff<B>>(&config, device);
    let route = Route::new(vec![0, 0, 1, 3, 3, 0]).unwrap();
    let tokens = vec![random_tokens(1, 9, 37), random_tokens(2, 9, 37)];
    let logits = model.forward_tokens(&tokens, &route).unwrap();
    let weights = logits.random_like(burn::tensor::Distribution::Normal(0.0, 1.0));
    let gradients = (logits * weights.detach()).sum().backward();
    let nonzero = |values: Vec<f64>| values.iter().any(|v| v.abs() > 0.0);
    for (layer, block) in model.blocks.iter().enumerate() {
        let attention = &block.attention;
        let key = attention.key.weight.grad(&gradients);
        let value = attention.value.weight.grad(&gradients);
        if route.is_source(layer) {
            assert!(
                key.map(to_host).is_some_and(nonzero),
                "layer {layer} key grad"
            );
            assert!(
                value.map(to_host).is_some_and(nonzero),
                "layer {layer} value grad"
            );
        } else {
            assert!(key.is_none(), "non-source layer {layer} got a key gradient");
            assert!(
                value.is_none(),
                "non-source layer {layer} got a value gradient"
            );
        }
        let query = attention.query.weight.grad(&gradients);
        assert!(
            query.map(to_host).is_some_and(nonzero),
            "layer {layer} query grad"
        );
    }
}

/// Training gradients agree with finite differences of the f64 oracle, under a route that
/// shares keys/values across layers: for entries of every attention projection of a layer that
/// reads its own keys/values, of one that reads an earlier layer's, and of a source layer read
/// by later ones, `∂L/∂w` from the backend's autodiff matches `(L(w + h) - L(w - h)) / 2h` of
/// the oracle, with `L = Σ logits ⊙ r + Σ cross-entropy(logits, targets)` for fixed random `r`
/// and targets (the cross-entropy through `kv_routing::cross_entropy_per_token`, as training
/// computes it). A backend's own differentiable kernels (flex's training attention, norms,
/// SwiGLU and vocabulary loss) are what this checks on that backend; `.ci/mutants` runs it
/// against deliberate errors in each of them, every one of which must fail it.
pub fn training_gradients_match_oracle_finite_differences<B: Backend>(device: &B::Device) {
    use crate::oracle::{LayerWeight, OracleModel};
    use burn::tensor::{Tensor, TensorData};
    use rand::{RngExt, SeedableRng};

    let config = tiny_config(2);
    let model = tiny_model::<Autodiff<B>>(&config, device);
    let oracle = OracleModel::from_model(&model, &config);
    // Layers 1 and 2 read layer 0 and 1; 3 is a source read by 4 and 5.
    let route = Route::new(vec![0, 0, 1, 3, 3, 3]).unwrap();
    // 72 rows: more than one task of the flex norm kernel's backward pass (64 rows each).
    let (batch, seq_len, vocab) = (6, 12, config.vocab_size);
    let tokens: Vec<Vec<u32>> = (0..batch)
        .map(|b| random_tokens(70 + b as u64, seq_len, vocab))
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let readout: Vec<f64> = (0..batch * seq_len * vocab)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();

    let targets: Vec<u32> = random_tokens(90, batch * seq_len, vocab);

    let logits = model.forward_tokens(&tokens, &route).unwrap();
    let readout_tensor = Tensor::<Autodiff<B>, 3>::from_data(
        TensorData::new(readout.clone(), [batch, seq_len, vocab]),
        device,
    );
    let cross_entropy = kv_routing::cross_entropy_per_token(logits.clone(), &targets).unwrap();
    let gradients = ((logits * readout_tensor).sum() + cross_entropy.sum()).backward();

    let oracle_loss = |oracle: &OracleModel| -> f64 {
        tokens
            .iter()
            .enumerate()
            .map(|(b, tokens)| {
                let logits = oracle.logits(tokens, &route);
                let readout: f64 = logits
                    .iter()
                    .flatten()
                    .zip(&readout[b * seq_len * vocab..][..seq_len * vocab])
                    .map(|(logit, r)| logit * r)
                    .sum();
                let cross_entropy: f64 = logits
                    .iter()
                    .zip(&targets[b * seq_len..][..seq_len])
                    .map(|(row, &target)| {
                        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let sum: f64 = row.iter().map(|x| (x - max).exp()).sum();
                        max + sum.ln() - row[target as usize]
                    })
                    .sum();
                readout + cross_entropy
            })
            .sum()
    };
    let step = 1e-4;
    let mut checked = Vec::new();
    for layer in [0, 2, 3, 5] {
        let block = &model.blocks[layer];
        let attention = &block.attention;
        for (weight, param) in [
            (LayerWeight::Query, attention.query.weight.grad(&gradients)),
            (LayerWeight::Key, attention.key.weight.grad(&gradients)),
            (LayerWeight::Value, attention.value.weight.grad(&gradients)),
            (
                LayerWeight::Output,
                attention.output.weight.grad(&gradients),
            ),
        ]
        .into_iter()
        .map(|(weight, grad)| (weight, grad.map(to_host)))
        .chain([
            (
                LayerWeight::AttentionNorm,
                block.attention_norm.gamma.grad(&gradients).map(to_host),
            ),
            (
                LayerWeight::MlpNorm,
                block.mlp_norm.gamma.grad(&gradients).map(to_host),
            ),
        ]) {
            let Some(grad) = param else {
                // Keys/values of a layer that is no source were never computed.
                assert!(
                    matches!(weight, LayerWeight::Key | LayerWeight::Value)
                        && !route.is_source(layer),
                    "layer {layer} {weight:?}: no gradient"
                );
                continue;
            };
            for _ in 0..3 {
                let index = rng.random_range(0..grad.len());
                let finite_difference =
                    (oracle_loss(&oracle.with_nudged_weight(layer, weight, index, step))
                        - oracle_loss(&oracle.with_nudged_weight(layer, weight, index, -step)))
                        / (2.0 * step);
                checked.push((layer, weight, index, grad[index], finite_difference));
            }
        }
    }
    // Relative to the largest gradient checked: the backend computes in its own precision.
    let scale = checked.iter().fold(0.0f64, |m, c| m.max(c.4.abs()));
    let tolerance = crate::support::tolerance::<B>(device);
    let bound = scale * (tolerance.rel * 20.0).min(0.1);
    for (layer, weight, index, got, want) in checked {
        assert!(
            (got - want).abs() <= bound,
            "layer {layer} {weight:?}[{index}]: autodiff {got}, finite difference {want} \
             (bound {bound:.3e})"
        );
    }
}
