//! Cross-backend benchmarks of kv-routing. The backend is the crate feature (default flex):
//!
//! ```text
//! cargo bench -p kv-routing-benches                                   # flex, tiny + medium
//! KV_BENCH_SIZES=tiny cargo bench -p kv-routing-benches --no-default-features --features wgpu
//! cargo run --release -p kv-routing-benches --bin bench-report         # tables from the results
//! ```
//!
//! Groups: `decode` (tokens/s per plan, context, batch), `prefill` (time to first token),
//! `context_growth` (decode step vs context), `train_step` (per routing probability, and with
//! every layer's K/V computed), `capacity` (aggregate decode at the largest batch a 1 GiB KV
//! budget fits; `KV_BENCH_BUDGET_MIB` sets another budget), `mha_baseline` (our cached
//! attention vs burn-nn's `MhaCache`), and `real_checkpoint` when `KV_BENCH_MODEL` names a
//! pretrained model (a Hugging Face checkpoint directory or a GGUF file): decode at batch 1 and
//! 8, context 1024, full / every2 / every4, and time to first token of 512 tokens.

use std::time::Duration;

use burn::module::Module;
use burn::nn::attention::{
    generate_autoregressive_mask, MhaCache, MhaInput, MultiHeadAttentionConfig,
};
use burn::tensor::{Distribution, Tensor};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, SamplingMode,
};
use kv_routing::{
    CachePlan, RotaryEmbeddingConfig, Route, RoutedTransformer, StochasticKvAttentionConfig,
};
use kv_routing_backend::{device, AutodiffBackend, Backend};
use kv_routing_benches::*;

/// Times `DECODE_STEPS` decode steps of `model` from a cache of `batch` sequences holding
/// `context` tokens (capacity `capacity`) under `plan`; the cache is rebuilt outside the timing.
fn bench_cached_decode(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: String,
    model: &RoutedTransformer<Backend>,
    plan: &CachePlan,
    (batch, context, capacity): (usize, usize, usize),
) {
    let device = device();
    group.bench_function(id, |b| {
        b.iter_batched_ref(
            || {
                let mut cache = model.new_cache(batch, capacity, plan.route()).unwrap();
                fill_cache(&mut cache, context, &device).unwrap();
                cache
            },
            |cache| decode(model, cache, DECODE_STEPS).unwrap(),
            BatchSize::PerIteration,
        )
    });
}

fn decode_benchmarks(c: &mut Criterion) {
    let device = device();
    for size in sizes() {
        let model = size.config.init::<Backend>(&device).unwrap();
        let mut group = slow_group(c, "decode");
        for (plan_name, plan) in plans(size.config.n_layers) {
            for batch in DECODE_BATCHES {
                for context in DECODE_CONTEXTS {
                    let id = bench_id(size.name, batch, plan_name, context);
                    let shape = (batch, context, context + DECODE_STEPS);
                    bench_cached_decode(&mut group, id, &model, &plan, shape);
                }
            }
        }
        group.finish();

        let mut group = slow_group(c, "context_growth");
        let full = CachePlan::full(size.config.n_layers).unwrap();
        for context in GROWTH_CONTEXTS {
            let id = bench_id(size.name, 1, "full", context);
            let shape = (1, context, context + DECODE_STEPS);
            bench_cached_decode(&mut group, id, &model, &full, shape);
        }
        group.finish();
    }
}

fn prefill_benchmarks(c: &mut Criterion) {
    let device = device();
    let mut group = slow_group(c, "prefill");
    for size in sizes() {
        let model = size.config.init::<Backend>(&device).unwrap();
        for (plan_name, plan) in plans(size.config.n_layers) {
            for len in PREFILL_LENGTHS {
                let prompt = synthetic_tokens(1, len, size.config.vocab_size);
                group.bench_function(bench_id(size.name, 1, plan_name, len), |b| {
                    b.iter(|| {
                        let mut cache = model.new_cache(1, len, plan.route()).unwrap();
                        sync(model.forward_cached_last(&prompt, &mut cache).unwrap());
                    })
                });
            }
        }
    }
    group.finish();
}

fn train_benchmarks(c: &mut Criterion) {
    let device = device();
    let mut group = slow_group(c, "train_step");
    for size in sizes() {
        let (batch, seq_len) = size.train_batch;
        let tokens = synthetic_tokens(batch, seq_len, size.config.vocab_size);
        let variants = TRAIN_PROBABILITIES
            .iter()
            .map(|&p| (format!("{}_p{}", size.name, p), p, false))
            .chain(std::iter::once((
                format!("{}_p0.5_all_kv", size.name),
                0.5,
                true,
            )));
        for (id, p, all_kv) in variants {
            let mut training = TrainLoop::<AutodiffBackend>::new(&size.config, p, &device).unwrap();
            group.bench_function(id, |b| b.iter(|| training.step(&tokens, all_kv).unwrap()));
        }
    }
    group.finish();
}

fn capacity_benchmarks(c: &mut Criterion) {
    let device = device();
    let mut group = slow_group(c, "capacity");
    for size in sizes() {
        let model = size.config.init::<Backend>(&device).unwrap();
        for (plan_name, plan) in plans(size.config.n_layers) {
            let batch = capacity_batch(&size.config, &plan);
            // The cache holds the context plus the decoded tokens: stay inside the budget.
            let shape = (batch, CAPACITY_CONTEXT - DECODE_STEPS, CAPACITY_CONTEXT);
            let id = bench_id(size.name, batch, plan_name, CAPACITY_CONTEXT);
            bench_cached_decode(&mut group, id, &model, &plan, shape);
        }
    }
    group.finish();
}

fn mha_baseline_benchmarks(c: &mut Criterion) {
    let device = device();
    let (d_model, heads) = (768, 12);
    let ours = StochasticKvAttentionConfig::new(d_model, heads)
        .init::<Backend>(&device)
        .unwrap();
    let rope = RotaryEmbeddingConfig::new(d_model / heads, 8192)
        .init::<Backend>(&device)
        .unwrap();
    let burn_mha = MultiHeadAttentionConfig::new(d_model, heads).init::<Backend>(&device);
    let mut group = slow_group(c, "mha_baseline");
    for (batch, contexts) in [(1, &[256, 1024, 4096][..]), (8, &[256, 1024][..])] {
        for &context in contexts {
            let hidden = Tensor::<Backend, 3>::random(
                [batch, context + DECODE_STEPS, d_model],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            group.bench_function(format!("ours_b{batch}_c{context}"), |b| {
                b.iter_batched_ref(
                    || {
                        let route = Route::identity(1).unwrap();
                        let layout = kv_routing::KvCacheLayout {
                            batch_size: batch,
                            n_layers: 1,
                            n_kv_heads: heads,
                            head_dim: d_model / heads,
                            capacity: context + DECODE_STEPS,
                        };
                        let mut cache =
                            kv_routing::KvCacheManager::<Backend>::new(layout, route, &device)
                                .unwrap();
                        fill_cache(&mut cache, context, &device).unwrap();
                        cache
                    },
                    |cache| {
                        let mut output = None;
                        for i in 0..DECODE_STEPS {
                            let x = hidden.clone().slice([
                                0..batch,
                                context + i..context + i + 1,
                                0..d_model,
                            ]);
                            let mut step = cache.begin_step(&vec![1; batch], 1).unwrap();
                            let angles = rope.angles(step.positions(), batch, 1).unwrap();
                            let mask = step.mask().unwrap();
                            output = Some(ours.forward(0, x, &angles, &mask, &mut step).unwrap());
                            step.commit().unwrap();
                        }
                        sync(output.unwrap());
                    },
                    BatchSize::PerIteration,
                )
            });
            group.bench_function(format!("burn_mhacache_b{batch}_c{context}"), |b| {
                b.iter_batched_ref(
                    || {
                        let mut cache = MhaCache::autoregressive();
                        let prefix = hidden.clone().slice([0..batch, 0..context, 0..d_model]);
                        let mask = generate_autoregressive_mask::<Backend>(batch, context, &device);
                        sync(
                            burn_mha
                                .forward_cache(
                                    MhaInput::self_attn(prefix).mask_attn(mask),
                                    &mut cache,
                                )
                                .context,
                        );
                        cache
                    },
                    |cache| {
                        let mut output = None;
                        for i in 0..DECODE_STEPS {
                            let len = context + i + 1;
                            let input = hidden.clone().slice([0..batch, 0..len, 0..d_model]);
                            let mask = generate_autoregressive_mask::<Backend>(batch, len, &device);
                            output = Some(
                                burn_mha
                                    .forward_cache(
                                        MhaInput::self_attn(input).mask_attn(mask),
                                        cache,
                                    )
                                    .context,
                            );
                        }
                        sync(output.unwrap());
                    },
                    BatchSize::PerIteration,
                )
            });
        }
    }
    group.finish();
    drop(burn_mha.into_record());
}

/// Decode and prefill of the pretrained model named by `KV_BENCH_MODEL`, if any.
fn real_checkpoint_benchmarks(c: &mut Criterion) {
    let Ok(path) = std::env::var("KV_BENCH_MODEL") else {
        return;
    };
    let device = device();
    let loaded = kv_routing_train::pretrained::load_model_dir::<Backend>(path.as_ref(), &device)
        .unwrap_or_else(|e| panic!("KV_BENCH_MODEL={path}: {e}"));
    let model = &loaded.model;
    let name = std::path::Path::new(&path)
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy().replace('.', "_"));
    let mut group = slow_group(c, "real_checkpoint");
    let compared = plans(model.n_layers())
        .into_iter()
        .filter(|(plan, _)| ["full", "every2", "every4"].contains(plan));
    for (plan_name, plan) in compared {
        for batch in DECODE_BATCHES {
            let context = 1024;
            let id = format!("{name}_decode_b{batch}_{plan_name}_c{context}");
            let shape = (batch, context, context + DECODE_STEPS);
            bench_cached_decode(&mut group, id, model, &plan, shape);
        }
        let prompt = synthetic_tokens(1, 512, model.vocab_size());
        group.bench_function(format!("{name}_prefill_b1_{plan_name}_512"), |b| {
            b.iter(|| {
                let mut cache = model.new_cache(1, 512, plan.route()).unwrap();
                sync(model.forward_cached_last(&prompt, &mut cache).unwrap());
            })
        });
    }
    group.finish();
}

/// A group in flat sampling mode: every sample runs the same number of iterations, so a
/// benchmark whose iteration takes seconds (medium prefill, training) needs 10 iterations, not
/// the 55 of criterion's default linear mode.
fn slow_group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group.sampling_mode(SamplingMode::Flat);
    group
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = decode_benchmarks, prefill_benchmarks, train_benchmarks, capacity_benchmarks, mha_baseline_benchmarks, real_checkpoint_benchmarks
}
criterion_main!(benches);
