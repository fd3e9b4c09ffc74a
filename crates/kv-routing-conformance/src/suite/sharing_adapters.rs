//! Sharing adapters ([`kv_routing::sharing_adapter`]): under the full plan a model with
//! adapters is bit for bit the model without them; under every sharing route it is the oracle
//! on the merged weights `W + scale · down · up`, cached as uncached, and in a batch of mixed
//! plans each sequence is what it is alone. Training touches only the adapters.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use burn_autodiff::Autodiff;
use kv_routing::{
    reinit_seeded, BlockFormat, CachePlan, KvRoutingError, MemoryBudget, Projection,
    RoutedTransformer, RoutedTransformerConfig, SharingAdapterConfig,
};

use super::cached::assert_matches_uncached;
use super::oracle_agreement::route_kinds;
use crate::oracle::OracleModel;
use crate::support::{
    assert_close, logits_to_host, random_tokens, tiny_config, tiny_model, to_host, tolerance,
};

/// The tiny model with rank-3 adapters (alpha 6: scale 2) whose `down` and `up` are both
/// random (a fresh adapter's zero `up` would hide a wrong product or a missing scale).
fn adapted_model<B: Backend>(
    config: &RoutedTransformerConfig,
    device: &B::Device,
) -> RoutedTransformer<B> {
    let adapter = SharingAdapterConfig::new(3).with_alpha(Some(6.0));
    let mut model = tiny_model::<B>(config, device)
        .with_sharing_adapters(&adapter)
        .unwrap();
    for (b, block) in model.blocks.iter_mut().enumerate() {
        for (p, projection) in block.projections_mut().into_iter().enumerate() {
            let delta = projection.sharing.take().unwrap();
            projection.sharing = Some(reinit_seeded(delta, (b * 7 + p) as u64, 0.2).unwrap());
        }
    }
    model
}

/// `projection`'s weight plus its delta, computed on the host in f64, with no adapter.
fn merged<B: Backend>(projection: &Projection<B>) -> Projection<B> {
    let delta = projection.sharing.as_ref().unwrap();
    let [d_input, d_output] = projection.dims();
    let rank = delta.down.dims()[1];
    let (weight, down, up) = (
        to_host(projection.weight.val()),
        to_host(delta.down.val()),
        to_host(delta.up.val()),
    );
    let mut values = weight;
    for i in 0..d_input {
        for o in 0..d_output {
            let low: f64 = (0..rank)
                .map(|r| down[i * rank + r] * up[r * d_output + o])
                .sum();
            values[i * d_output + o] += delta.scale * low;
        }
    }
    let device = projection.weight.device();
    Projection {
        weight: burn::module::Param::from_tensor(Tensor::from_data(
            TensorData::new(values, [d_input, d_output]),
            &device,
        )),
        bias: projection.bias.clone(),
        blocks: None,
        sharing: None,
    }
}

/// Every route kind: the full route gives the base model's logits exactly (the deltas are not
/// evaluated), every sharing route the oracle's on the merged weights; cached steps equal the
/// uncached pass under every:2; a mixed batch (full, every:2, every:3) gives each sequence its
/// logits alone; block weights keep the adapters.
pub fn sharing_adapters_change_only_sharing_plans<B: Backend>(device: &B::Device) {
    let config = tiny_config(2);
    let base = tiny_model::<B>(&config, device);
    let adapted = adapted_model::<B>(&config, device);
    assert_eq!(adapted.sharing_adapter_rank(), Some(3));
    let mut merged_model = adapted.clone();
    for block in &mut merged_model.blocks {
        for projection in block.projections_mut() {
            *projection = merged(projection);
        }
    }
    let base_oracle = OracleModel::from_model(&base, &config);
    let merged_oracle = OracleModel::from_model(&merged_model, &config);
    let tolerance = tolerance::<B>(device);
    let batch = vec![random_tokens(5, 11, config.vocab_size)];
    let mut shared_routes = 0;
    for (name, route) in route_kinds(config.n_layers) {
        let logits = logits_to_host(adapted.forward_tokens(&batch, &route).unwrap());
        if !route.shares() {
            let plain = logits_to_host(base.forward_tokens(&batch, &route).unwrap());
            assert_eq!(
                logits, plain,
                "route {name}: the full plan is the base model's"
            );
        }
        shared_routes += usize::from(route.shares());
        let oracle = if route.shares() {
            &merged_oracle
        } else {
            &base_oracle
        };
        for (p, row) in oracle.logits(&batch[0], &route).iter().enumerate() {
            assert_close(
                &logits[0][p],
                row,
                tolerance,
                &format!("adapters, route {name} {route}, position {p}"),
            );
        }
    }
    assert!(shared_routes >= 3, "the route kinds include sharing routes");
    // The adapters matter: a sharing route's logits are not the base model's.
    let every2 = CachePlan::every_kth(config.n_layers, 2).unwrap().route();
    let moved = to_host(adapted.forward_tokens(&batch, &every2).unwrap())
        .iter()
        .zip(to_host(base.forward_tokens(&batch, &every2).unwrap()))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        moved > 100.0 * tolerance.abs,
        "adapters moved every:2 by {moved}"
    );

    let sequences = vec![
        random_tokens(6, 12, config.vocab_size),
        random_tokens(7, 9, config.vocab_size),
    ];
    assert_matches_uncached(
        &adapted,
        &every2,
        &sequences,
        &[5, 1, 1, 5],
        "adapters, cached under every:2",
    );

    let routes = vec![
        CachePlan::full(config.n_layers).unwrap().route(),
        every2.clone(),
        CachePlan::every_kth(config.n_layers, 3).unwrap().route(),
    ];
    let prompts: Vec<Vec<u32>> = (0..3)
        .map(|b| random_tokens(20 + b, 4 + b as usize, config.vocab_size))
        .collect();
    let mut cache = adapted
        .new_mixed_cache(&routes, 8, &MemoryBudget::UNLIMITED)
        .unwrap();
    let logits = to_host(adapted.forward_mixed_last(&prompts, &mut cache).unwrap());
    for (b, (route, row)) in routes
        .iter()
        .zip(logits.chunks(config.vocab_size))
        .enumerate()
    {
        let alone = logits_to_host(
            adapted
                .forward_tokens(std::slice::from_ref(&prompts[b]), route)
                .unwrap(),
        );
        assert_close(
            row,
            alone[0].last().unwrap(),
            tolerance,
            &format!("adapters, mixed batch, sequence {b} under {route}"),
        );
    }

    // A pass recorded under the full plan (adapters off) reused for a route that shares from
    // layer 3 on (adapters on everywhere): the same logits as that route's own pass.
    let recorded = adapted.forward_recorded(&batch, &routes[0]).unwrap();
    let late = kv_routing::Route::new(vec![0, 1, 2, 2, 4, 4]).unwrap();
    assert_close(
        &to_host(adapted.forward_from(&recorded, 3, &late).unwrap()),
        &to_host(adapted.forward_tokens(&batch, &late).unwrap()),
        tolerance,
        "adapters, a sharing route reusing a full-plan pass",
    );

    // Merged into the weights for serving: every sharing route as before, the full plan (one
    // pass, a cache, a mixed batch with a full group, a recorded pass) refused.
    let merged_serving = adapted.clone().with_sharing_adapters_merged().unwrap();
    assert!(merged_serving.sharing_adapters_merged());
    assert_eq!(merged_serving.sharing_adapter_rank(), None);
    for (name, route) in route_kinds(config.n_layers) {
        let served = merged_serving.forward_tokens(&batch, &route);
        if !route.shares() {
            assert!(
                matches!(served, Err(KvRoutingError::InvalidRoute(_))),
                "merged, route {name}"
            );
            continue;
        }
        assert_close(
            &to_host(served.unwrap()),
            &to_host(adapted.forward_tokens(&batch, &route).unwrap()),
            tolerance,
            &format!("merged adapters, route {name} {route}"),
        );
    }
    assert_matches_uncached(
        &merged_serving,
        &every2,
        &sequences,
        &[5, 1, 1, 5],
        "merged adapters, cached under every:2",
    );
    let mut full_cache = merged_serving.new_cache(1, 8, routes[0].clone()).unwrap();
    assert!(merged_serving
        .forward_cached(&batch[..1], &mut full_cache)
        .is_err());
    let mut mixed = merged_serving
        .new_mixed_cache(&routes, 8, &MemoryBudget::UNLIMITED)
        .unwrap();
    assert!(merged_serving
        .forward_mixed_last(&prompts, &mut mixed)
        .is_err());
    assert!(merged_serving.forward_recorded(&batch, &routes[0]).is_err());
    assert!(base.clone().with_sharing_adapters_merged().is_err());
    // Block projections keep their delta: the sum would need quantizing again.
    let merged_blocks = adapted
        .clone()
        .with_block_weights(BlockFormat::Q8_0)
        .unwrap()
        .with_sharing_adapters_merged()
        .unwrap();
    assert!(merged_blocks.blocks[0].attention.query.sharing.is_some());
    assert!(merged_blocks.blocks[0].mlp.down.sharing.is_none());

    let blocks = adapted
        .clone()
        .with_block_weights(BlockFormat::Q8_0)
        .unwrap();
    assert!(blocks.blocks[0].attention.query.blocks.is_some());
    assert_eq!(blocks.sharing_adapter_rank(), Some(3));
    assert!(adapted
        .clone()
        .with_sharing_adapters(&SharingAdapterConfig::new(2))
        .is_err());
    assert!(base
        .clone()
        .with_sharing_adapters(&SharingAdapterConfig::new(0))
        .is_err());
}

/// A fresh adapter changes nothing under any route (up to rounding), and a model made to train only its
/// adapters gives gradients to the deltas under a sharing route and to nothing else.
pub fn only_sharing_adapters_get_gradients<B: Backend>(device: &B::Device) {
    let config = tiny_config(2);
    let fresh = tiny_model::<B>(&config, device)
        .with_sharing_adapters(&SharingAdapterConfig::new(2))
        .unwrap();
    let base = tiny_model::<B>(&config, device);
    let tokens = vec![random_tokens(8, 9, config.vocab_size)];
    // Adding a zero delta is exact on the CPU backends; wgpu's fused kernels may round the
    // sum differently in the last place, hence a tolerance.
    for (name, route) in route_kinds(config.n_layers) {
        assert_close(
            &to_host(fresh.forward_tokens(&tokens, &route).unwrap()),
            &to_host(base.forward_tokens(&tokens, &route).unwrap()),
            tolerance::<B>(device),
            &format!("a fresh adapter under route {name}"),
        );
    }

    let model = adapted_model::<Autodiff<B>>(&config, device)
        .with_only_sharing_adapters_trainable()
        .unwrap();
    assert!(tiny_model::<Autodiff<B>>(&config, device)
        .with_only_sharing_adapters_trainable()
        .is_err());
    let route = kv_routing::Route::new(vec![0, 0, 1, 3, 3, 0]).unwrap();
    let logits = model.forward_tokens(&tokens, &route).unwrap();
    let weights = logits.random_like(burn::tensor::Distribution::Normal(0.0, 1.0));
    let gradients = (logits * weights.detach()).sum().backward();
    let nonzero = |values: Vec<f64>| values.iter().any(|v| v.abs() > 0.0);
    assert!(model.embedding.weight.grad(&gradients).is_none());
    for (layer, block) in model.blocks.iter().enumerate() {
        assert!(block.attention_norm.gamma.grad(&gradients).is_none());
        for (p, projection) in block.projections().into_iter().enumerate() {
            assert!(
                projection.weight.grad(&gradients).is_none(),
                "layer {layer}, projection {p}: a frozen weight got a gradient"
            );
            let delta = projection.sharing.as_ref().unwrap();
            // Keys and values (projections 1 and 2) are computed by source layers only.
            let computed = !matches!(p, 1 | 2) || route.is_source(layer);
            for (part, grad) in [
                ("down", delta.down.grad(&gradients)),
                ("up", delta.up.grad(&gradients)),
            ] {
                assert_eq!(
                    grad.map(to_host).is_some_and(nonzero),
                    computed,
                    "layer {layer}, projection {p}, {part}: gradient when computed"
                );
            }
        }
    }
}
