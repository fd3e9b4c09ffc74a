//! What the cache holds: exactly the route's source layers, at exactly the formula's bytes.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use kv_routing::{
    CachePlan, GenerationConfig, KeyValue, KvCacheLayout, KvCacheManager, KvRoutingError, KvStore,
    MemoryBudget, Route,
};

use super::cached::{chunk_steps, feed_cached};
use super::oracle_agreement::route_kinds;
use crate::support::{random_tokens, tiny_config, tiny_model};

/// For every route kind the cache stores the sources and nothing else, and its byte count is
/// `|sources| * 2 * batch * n_kv_heads * capacity * head_dim * bytes_per_element`, before and
/// after appending. A full plan gives a complete cache.
pub fn cache_holds_exactly_the_sources<B: Backend>(device: &B::Device) {
    let config = tiny_config(2);
    let model = tiny_model::<B>(&config, device);
    let element = Tensor::<B, 1>::zeros([1], device).dtype().size();
    let (batch, capacity) = (3, 20);
    let per_layer = 2 * batch * 2 * capacity * 8 * element;
    for (name, route) in route_kinds(config.n_layers) {
        let mut cache = model.new_cache(batch, capacity, route.clone()).unwrap();
        let sources = route.sources();
        assert_eq!(cache.cached_layers(), sources, "{name}");
        let expected: Vec<usize> = (0..config.n_layers)
            .map(|l| if route.is_source(l) { per_layer } else { 0 })
            .collect();
        assert_eq!(cache.bytes_per_layer(), expected, "{name}");
        assert_eq!(cache.bytes(), sources.len() * per_layer, "{name}");
        assert_eq!(
            model.kv_bytes_per_token(&route).unwrap() * batch * capacity,
            cache.bytes(),
            "{name}: the computed figure"
        );
        let sequences = vec![random_tokens(1, 7, 37); batch];
        feed_cached(&model, &mut cache, &chunk_steps(&sequences, &[4, 1, 1, 1]));
        assert_eq!(
            cache.bytes(),
            sources.len() * per_layer,
            "{name} after appending"
        );
        assert_eq!(cache.len(), 7);
    }
    let full = model
        .new_cache(
            batch,
            capacity,
            CachePlan::full(config.n_layers).unwrap().route(),
        )
        .unwrap();
    assert_eq!(
        full.cached_layers(),
        (0..config.n_layers).collect::<Vec<_>>()
    );
    assert!(full.bytes_per_layer().iter().all(|&b| b == per_layer));

    let quarter = CachePlan::every_kth(config.n_layers, 4).unwrap().route();
    let generation = model
        .generate(
            &[random_tokens(2, 4, 37)],
            &quarter,
            &GenerationConfig {
                max_new_tokens: 3,
                ..Default::default()
            },
        )
        .unwrap();
    let one_sequence_layer = 2 * 2 * (4 + 3) * 8 * element;
    assert_eq!(
        generation.kv_bytes(),
        2 * one_sequence_layer,
        "generate reports its cache"
    );
}

/// The model's cached steps keep no view of the cache past a step, so every write can be in
/// place (`copied_writes` stays 0); a view that a caller keeps is counted at the next write of
/// its layer, which still leaves the view as it was (copy-on-write) and the cache correct.
pub fn views_kept_past_a_step_are_counted<B: Backend>(device: &B::Device) {
    let config = tiny_config(2);
    let model = tiny_model::<B>(&config, device);
    for (name, route) in route_kinds(config.n_layers) {
        let mut cache = model.new_cache(2, 12, route).unwrap();
        let sequences = vec![random_tokens(3, 9, 37); 2];
        feed_cached(&model, &mut cache, &chunk_steps(&sequences, &[5, 1, 2, 1]));
        assert_eq!(cache.copied_writes(), 0, "{name}: the model kept a view");
    }

    let layout = KvCacheLayout {
        batch_size: 1,
        n_layers: 1,
        n_kv_heads: 1,
        head_dim: 2,
        capacity: 4,
    };
    let mut cache = KvCacheManager::<B>::new(layout, Route::new(vec![0]).unwrap(), device).unwrap();
    let filled = |value: f32| {
        let slot = Tensor::<B, 4>::full([1, 1, 1, 2], value, device);
        KeyValue::new(slot.clone(), slot)
    };
    let append = |cache: &mut KvCacheManager<B>, value: f32| {
        let mut step = cache.begin_step(&[1], 1).unwrap();
        step.put(0, filled(value)).unwrap();
        let view = step.get(0).unwrap();
        step.commit().unwrap();
        view
    };
    let kept = append(&mut cache, 1.0);
    drop(append(&mut cache, 2.0));
    assert_eq!(cache.copied_writes(), 1, "the kept view was not seen");
    let values = |kv: KeyValue<B>| {
        kv.value
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap()
    };
    assert_eq!(values(kept), vec![1.0, 1.0], "the kept view changed");
    drop(append(&mut cache, 3.0));
    let last = append(&mut cache, 4.0);
    assert_eq!(cache.copied_writes(), 1, "a dropped view was counted");
    assert_eq!(
        values(last),
        vec![1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0],
        "the cache lost a write"
    );
}

/// A generation or cache over a memory budget is refused before anything is allocated, with
/// the exact bytes it needs (KV cache: the formula; generation: the cache plus the prompts'
/// hidden states and last logits); at exactly that budget it runs. Sizes that overflow are
/// refused under any budget instead of panicking.
pub fn memory_budgets_refuse_before_allocating<B: Backend>(device: &B::Device) {
    let config = tiny_config(2);
    let model = tiny_model::<B>(&config, device);
    let element = Tensor::<B, 1>::zeros([1], device).dtype().size();
    let route = CachePlan::every_kth(config.n_layers, 2).unwrap().route();
    let prompts = vec![random_tokens(3, 5, 37), random_tokens(4, 3, 37)];
    let max_new_tokens = 4;
    let capacity = 5 + max_new_tokens;
    let kv = route.sources().len() * 2 * 2 * 2 * capacity * 8 * element;
    let prefill = 2 * 5 * (2 * config.d_model + config.vocab_size) * element;
    let needed = (kv + prefill) as u128;
    let settings = |budget: u64| GenerationConfig {
        max_new_tokens,
        memory_budget: MemoryBudget::bytes(budget),
        ..GenerationConfig::default()
    };

    match model.generate(&prompts, &route, &settings(needed as u64 - 1)) {
        Err(KvRoutingError::MemoryBudgetExceeded {
            needed_bytes,
            budget_bytes,
            what,
        }) => {
            assert_eq!(needed_bytes, Some(needed), "{what}");
            assert_eq!(budget_bytes, Some(needed as u64 - 1));
            let message = KvRoutingError::MemoryBudgetExceeded {
                what,
                needed_bytes,
                budget_bytes,
            }
            .to_string();
            assert!(message.contains(&format!("{needed} bytes")), "{message}");
        }
        other => panic!("a generation over its budget gave {other:?}"),
    }
    let generation = model
        .generate(&prompts, &route, &settings(needed as u64))
        .expect("a generation at exactly its budget runs");
    assert_eq!(generation.kv_bytes() as u128, kv as u128);

    let layout_bytes = (route.sources().len() * 2 * 3 * 2 * 7 * 8 * element) as u128;
    let refused = model.new_cache_within(3, 7, route.clone(), &MemoryBudget::bytes(64));
    assert!(
        matches!(refused, Err(KvRoutingError::MemoryBudgetExceeded { needed_bytes: Some(n), .. }) if n == layout_bytes),
        "{refused:?}"
    );
    // A capacity whose bytes overflow: refused even without a limit (no panic, no abort).
    for budget in [MemoryBudget::UNLIMITED, MemoryBudget::bytes(1 << 40)] {
        let refused = model.new_cache_within(usize::MAX, usize::MAX, route.clone(), &budget);
        assert!(
            matches!(
                refused,
                Err(KvRoutingError::MemoryBudgetExceeded {
                    needed_bytes: None,
                    ..
                })
            ),
            "{refused:?}"
        );
    }
    let huge = GenerationConfig {
        max_new_tokens: usize::MAX / 2,
        ..GenerationConfig::default()
    };
    // A length no context holds is refused by the context check, before any byte is counted
    // (the budget's own refusal of `generate` is checked above); never an overflow or a panic.
    assert!(matches!(
        model.generate(&prompts, &route, &huge),
        Err(KvRoutingError::SequenceTooLong { .. })
    ));
}
