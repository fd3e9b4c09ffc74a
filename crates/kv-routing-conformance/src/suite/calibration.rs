//! Plan calibration: forward passes rerun from a layer on, and the search on a model whose
//! answer is known by construction.

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use kv_routing::{
    CachePlan, CalibrationMeasure, KvRoutingError, PlanBudget, PlanCalibration,
    PlanCalibrationConfig, PlanSearch, RoutedTransformer,
};

use crate::oracle::OracleModel;
use crate::support::{
    assert_close, logits_to_host, random_tokens, tiny_config, tiny_model, tolerance,
};

/// A plan recorded layer by layer, then each of its children (one cached layer fewer) rerun
/// from the removed layer on: every logit matches the oracle under the child's route.
pub fn forward_from_a_layer_matches_the_oracle<B: Backend>(device: &B::Device) {
    let config = tiny_config(2);
    let model = tiny_model::<B>(&config, device);
    let oracle = OracleModel::from_model(&model, &config);
    let tolerance = tolerance::<B>(device);
    let tokens: Vec<Vec<u32>> = (0..2).map(|s| random_tokens(s, 11, 37)).collect();
    let parent = CachePlan::new(6, [0, 2, 3, 5]).unwrap();
    let recorded = model.forward_recorded(&tokens, &parent.route()).unwrap();
    let check = |logits: Tensor<B, 3>, plan: &CachePlan, context: &str| {
        for (b, rows) in logits_to_host(logits).iter().enumerate() {
            for (p, expected) in oracle.logits(&tokens[b], &plan.route()).iter().enumerate() {
                assert_close(
                    &rows[p],
                    expected,
                    tolerance,
                    &format!("{context}, sequence {b}, position {p}"),
                );
            }
        }
    };
    check(recorded.logits(), &parent, "the recorded pass");
    for removed in [2, 3, 5] {
        let child = CachePlan::new(
            6,
            parent
                .cached_layers()
                .iter()
                .copied()
                .filter(|&l| l != removed),
        )
        .unwrap();
        let logits = model
            .forward_from(&recorded, removed, &child.route())
            .unwrap();
        check(logits, &child, &format!("rerun from layer {removed}"));
    }
    // A route that differs below the start cannot reuse the recording.
    let full = CachePlan::full(6).unwrap().route();
    assert!(matches!(
        model.forward_from(&recorded, 3, &full),
        Err(KvRoutingError::InvalidRoute(_))
    ));
    assert!(model.forward_from(&recorded, 6, &full).is_err());
    assert!(matches!(
        model.forward_recorded(&[vec![1, 2, 3], vec![1, 2]], &full),
        Err(KvRoutingError::InvalidLengths(_))
    ));
}

/// The model of the search tests: layer 1 adds nothing to the residual stream (zero output
/// projections) and layer 2 has layer 1's norm and key/value weights, so layer 2's keys and
/// values are exactly layer 1's (a duplicate); layer 3's attention output is scaled up, so what
/// it reads matters most (essential).
fn duplicate_and_essential_model<B: Backend>(device: &B::Device) -> RoutedTransformer<B> {
    let mut model = tiny_model::<B>(&tiny_config(2), device);
    let zero = |p: &Param<Tensor<B, 2>>| p.clone().map(|w| w.zeros_like());
    model.blocks[1].attention.output.weight = zero(&model.blocks[1].attention.output.weight);
    model.blocks[1].mlp.down.weight = zero(&model.blocks[1].mlp.down.weight);
    let (first, rest) = model.blocks.split_at_mut(2);
    let (source, copy) = (&first[1], &mut rest[0]);
    copy.attention_norm = source.attention_norm.clone();
    copy.attention.key = source.attention.key.clone();
    copy.attention.value = source.attention.value.clone();
    let scaled = model.blocks[3]
        .attention
        .output
        .weight
        .clone()
        .map(|w| w * 8.0);
    model.blocks[3].attention.output.weight = scaled;
    model
}

fn calibration_sequences(order: &[u64]) -> Vec<Vec<u32>> {
    order
        .iter()
        .map(|&s| random_tokens(100 + s, 17, 37))
        .collect()
}

fn calibrate<B: Backend>(
    model: &RoutedTransformer<B>,
    budget: PlanBudget,
    measure: CalibrationMeasure,
    search: PlanSearch,
    order: &[u64],
) -> PlanCalibration {
    PlanCalibrationConfig::new(budget)
        .with_measure(measure)
        .with_search(search)
        .with_batch_size(3)
        .calibrate(model, &calibration_sequences(order), |_| {})
        .unwrap()
}

/// Greedy, beam and one-shot searches by the divergence from the full cache drop the
/// duplicate at no cost and keep the essential layer; the result depends on the set of
/// sequences, not their order.
pub fn calibration_drops_a_duplicate_and_keeps_an_essential_layer<B: Backend>(device: &B::Device) {
    let model = duplicate_and_essential_model::<B>(device);
    let zero = tolerance::<B>(device).abs;
    let kl = CalibrationMeasure::FullCacheKl;
    for search in [
        PlanSearch::Beam { width: 1 },
        PlanSearch::Beam { width: 2 },
        PlanSearch::OneShot,
    ] {
        let one_fewer = calibrate(&model, PlanBudget::CachedLayers(5), kl, search, &[0, 1, 2]);
        // Dropping either copy costs nothing; a tie goes to the lower layers kept, so layer 2
        // (the later copy) is the one dropped.
        assert_eq!(one_fewer.plan.cached_layers(), &[0, 1, 3, 4, 5], "{search}");
        assert!(one_fewer.damage.abs() <= zero, "{search}: {one_fewer:?}");
        let removal = &one_fewer.single_removal_damage;
        assert!(removal[2].unwrap().abs() <= zero, "{search}: {removal:?}");
        assert!(
            removal[4].unwrap().max(removal[5].unwrap()) < removal[3].unwrap(),
            "{search}: layer 3 is the most essential: {removal:?}"
        );
        let half = calibrate(&model, PlanBudget::Retention(0.5), kl, search, &[0, 1, 2]);
        let kept = half.plan.cached_layers();
        assert_eq!(kept.len(), 3, "{search}");
        // The rules of 3 layers out of 6: retention 0.5 and every:2 are the same plan.
        assert_eq!(half.rule_plans.len(), 1, "{search}");
        assert_eq!(half.rule_plans[0].plan.cached_layers(), &[0, 2, 4]);
        assert!(
            half.damage <= half.rule_plans[0].damage,
            "{search}: {half:?}"
        );
        assert!(
            kept.contains(&3) && !kept.contains(&2),
            "{search}: {kept:?}"
        );
        // Another order of the same sequences: the same result.
        let shuffled = calibrate(&model, PlanBudget::Retention(0.5), kl, search, &[2, 0, 1]);
        assert_eq!(
            (shuffled.plan, shuffled.damage.to_bits()),
            (half.plan.clone(), half.damage.to_bits()),
            "{search}"
        );
    }
    // Cross-entropy scores the plan's own loss, which a change may lower on a random model:
    // what it must get right is the figure. The chosen plan's damage is its mean
    // cross-entropy, computed here without the search's reuse of layers.
    let ce = calibrate(
        &model,
        PlanBudget::CachedLayers(3),
        CalibrationMeasure::CrossEntropy,
        PlanSearch::Beam { width: 1 },
        &[1, 2, 0],
    );
    let sequences = calibration_sequences(&[0, 1, 2]);
    let mean_ce = |plan: &CachePlan| {
        let (mut sum, mut count) = (0.0, 0);
        for sequence in &sequences {
            let (inputs, targets) = (&sequence[..16], &sequence[1..]);
            let logits = logits_to_host(
                model
                    .forward_tokens(&[inputs.to_vec()], &plan.route())
                    .unwrap(),
            );
            for (row, &target) in logits[0].iter().zip(targets) {
                let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let log_sum = row.iter().map(|v| (v - max).exp()).sum::<f64>().ln() + max;
                sum += log_sum - row[target as usize];
                count += 1;
            }
        }
        sum / count as f64
    };
    let tolerance = tolerance::<B>(device);
    assert_close(
        &[ce.damage],
        &[mean_ce(&ce.plan)],
        tolerance,
        "ce of the plan",
    );
    assert_close(
        &[ce.full_cache_value, ce.single_removal_damage[2].unwrap()],
        &[mean_ce(&CachePlan::full(6).unwrap()); 2],
        tolerance,
        "ce of the full cache and without the duplicate",
    );
    assert_eq!(ce.levels.len(), 3);
    assert!(ce.blocks_run > 0 && ce.candidates_evaluated == 5 + 4 + 3);
}

/// Budgets no plan meets are typed errors before anything runs; every other budget gives a
/// plan with layer 0 and exactly the layers (and bytes) it allows.
pub fn calibration_budgets_are_met_exactly_or_refused<B: Backend>(device: &B::Device) {
    let model = tiny_model::<B>(&tiny_config(2), device);
    let sequences = calibration_sequences(&[0]);
    let full_bytes = model
        .kv_bytes_per_token(&CachePlan::full(6).unwrap().route())
        .unwrap();
    let layer_bytes = full_bytes / 6;
    for budget in [
        PlanBudget::CachedLayers(0),
        PlanBudget::CachedLayers(7),
        PlanBudget::Retention(0.0),
        PlanBudget::Retention(1.5),
        PlanBudget::Retention(f64::NAN),
        PlanBudget::KvBytesPerToken(layer_bytes - 1),
        PlanBudget::KvBytesPerToken(full_bytes + 1),
    ] {
        let result = PlanCalibrationConfig::new(budget).calibrate(&model, &sequences, |_| {});
        assert!(
            matches!(result, Err(KvRoutingError::InvalidPlan(ref m)) if m.contains("budget")),
            "{budget}: {result:?}"
        );
    }
    for (budget, layers) in [
        (PlanBudget::CachedLayers(1), 1),
        (PlanBudget::CachedLayers(6), 6),
        (PlanBudget::Retention(0.34), 2),
        (PlanBudget::KvBytesPerToken(layer_bytes), 1),
        (
            PlanBudget::KvBytesPerToken(3 * layer_bytes + layer_bytes / 2),
            3,
        ),
        (PlanBudget::KvBytesPerToken(full_bytes), 6),
    ] {
        // The budget does not depend on the search: the cheapest one keeps the test quick on
        // slow backends.
        let found = PlanCalibrationConfig::new(budget)
            .with_search(PlanSearch::OneShot)
            .calibrate(&model, &sequences, |_| {})
            .unwrap();
        assert_eq!(found.plan.cached_layers().len(), layers, "{budget}");
        assert!(
            found
                .rule_plans
                .iter()
                .all(|rule| found.damage <= rule.damage),
            "{budget}: {found:?}"
        );
        assert_eq!(found.plan.cached_layers()[0], 0, "{budget}");
        let bytes = model.kv_bytes_per_token(&found.plan.route()).unwrap();
        assert_eq!(bytes, layers * layer_bytes, "{budget}");
    }
    // The full cache's budget searches nothing.
    let full = PlanCalibrationConfig::new(PlanBudget::Retention(1.0))
        .calibrate(&model, &sequences, |_| {})
        .unwrap();
    assert_eq!(full.plan, CachePlan::full(6).unwrap());
    assert_eq!(full.candidates_evaluated, 0);
    let config = PlanCalibrationConfig::new(PlanBudget::CachedLayers(3));
    for bad in [
        vec![],
        vec![vec![1, 2, 3], vec![1, 2]],
        vec![vec![5]],
        vec![vec![1; 66]],
    ] {
        assert!(
            matches!(
                config.calibrate(&model, &bad, |_| {}),
                Err(KvRoutingError::InvalidLengths(_))
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        config.calibrate(&model, &[vec![1, 99, 2]], |_| {}),
        Err(KvRoutingError::TokenOutOfRange { .. })
    ));
    for bad in [
        config.clone().with_batch_size(0),
        config.clone().with_search(PlanSearch::Beam { width: 0 }),
    ] {
        assert!(matches!(
            bad.calibrate(&model, &sequences, |_| {}),
            Err(KvRoutingError::InvalidConfig(_))
        ));
    }
}
