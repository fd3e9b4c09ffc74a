//! Workloads shared by the criterion benchmarks (`benches/kv_routing.rs`) and the report
//! (`src/bin/bench_report.rs`): model sizes, plans, cache filling, decode loops, and the naive
//! "compute every layer's K/V" forward that the training benchmark compares against.

#![forbid(unsafe_code)]

pub mod peer;

use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use kv_routing::{
    AttentionMask, CachePlan, KeyValue, KvCacheLayout, KvCacheManager, KvStore, Route,
    RoutedTransformer, RoutedTransformerConfig, StochasticRouter,
};

/// Decode steps timed per benchmark iteration (one step is too short to time on a GPU).
pub const DECODE_STEPS: usize = 8;

/// Contexts of the decode benchmark.
pub const DECODE_CONTEXTS: [usize; 3] = [256, 1024, 4096];

/// Batch sizes of the decode benchmark.
pub const DECODE_BATCHES: [usize; 2] = [1, 8];

/// Prompt lengths of the time-to-first-token benchmark.
pub const PREFILL_LENGTHS: [usize; 2] = [512, 2048];

/// Contexts of the cost-growth benchmark.
pub const GROWTH_CONTEXTS: [usize; 7] = [128, 256, 512, 1024, 2048, 4096, 8192];

/// Routing probabilities of the training benchmark.
pub const TRAIN_PROBABILITIES: [f64; 4] = [0.0, 0.25, 0.5, 0.75];

/// Default KV budget of the capacity benchmark, bytes (1 GiB).
pub const KV_BUDGET: usize = 1 << 30;

/// KV budget of the capacity benchmark in bytes: `KV_BENCH_BUDGET_MIB` when set (the slow
/// backends need a smaller one: one decode step of the 1 GiB batches takes minutes on ndarray),
/// [`KV_BUDGET`] otherwise. Plans are compared under the same budget, so their ratios hold at
/// any budget the machine can run; `bench-report` reads the same variable to find the batches.
///
/// # Panics
/// On a value that is not a positive number of MiB (a benchmark misconfiguration).
pub fn kv_budget() -> usize {
    match std::env::var("KV_BENCH_BUDGET_MIB") {
        Ok(mib) => match mib.trim().parse::<usize>() {
            Ok(mib) if mib > 0 => mib << 20,
            _ => panic!("KV_BENCH_BUDGET_MIB must be a positive whole number of MiB, got {mib:?}"),
        },
        Err(_) => KV_BUDGET,
    }
}

/// A byte count as `1 GiB` / `256 MiB`, for table titles.
pub fn budget_label(bytes: usize) -> String {
    if bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// Context of the capacity benchmark.
pub const CAPACITY_CONTEXT: usize = 1024;

/// A benchmarked model shape.
#[derive(Debug, Clone)]
pub struct ModelSize {
    /// `tiny` or `medium`.
    pub name: &'static str,
    /// The model.
    pub config: RoutedTransformerConfig,
    /// Sequences x tokens of one training step.
    pub train_batch: (usize, usize),
}

/// 12 layers, d_model 128, 4 query / 2 KV heads, byte vocabulary: 2.4M parameters.
pub fn tiny() -> ModelSize {
    ModelSize {
        name: "tiny",
        config: RoutedTransformerConfig::new(256, 128, 12, 4, 344)
            .with_n_kv_heads(Some(2))
            .with_max_seq_len(8192 + 64),
        train_batch: (16, 128),
    }
}

/// Llama-shaped, 12 layers, d_model 768, 12 query / 4 KV heads (GQA), vocabulary 32000:
/// about 122M parameters.
pub fn medium() -> ModelSize {
    ModelSize {
        name: "medium",
        config: RoutedTransformerConfig::new(32000, 768, 12, 12, 2048)
            .with_n_kv_heads(Some(4))
            .with_max_seq_len(8192 + 64),
        train_batch: (2, 256),
    }
}

/// The sizes to run: `KV_BENCH_SIZES=tiny` (comma-separated) restricts them; default both.
pub fn sizes() -> Vec<ModelSize> {
    let wanted = std::env::var("KV_BENCH_SIZES").unwrap_or_else(|_| "tiny,medium".into());
    [tiny(), medium()]
        .into_iter()
        .filter(|s| wanted.split(',').any(|w| w.trim() == s.name))
        .collect()
}

/// The paper's plans: every 1st/2nd/3rd/4th layer cached (100/50/33/25% of 12 layers).
pub fn plans(n_layers: usize) -> Vec<(&'static str, CachePlan)> {
    ["full", "every2", "every3", "every4"]
        .into_iter()
        .zip(1..)
        .map(|(name, k)| (name, CachePlan::every_kth(n_layers, k).expect("k >= 1")))
        .collect()
}

/// Benchmark id: `{size}_b{batch}_{plan}_c{context}`.
pub fn bench_id(size: &str, batch: usize, plan: &str, context: usize) -> String {
    format!("{size}_b{batch}_{plan}_c{context}")
}

/// Appends `len` keys/values (random blocks) for every sequence to every source layer of
/// `cache`, through the public step API (what a prefill would write, without running the model).
pub fn fill_cache<B: Backend>(
    cache: &mut KvCacheManager<B>,
    len: usize,
    device: &B::Device,
) -> kv_routing::Result<()> {
    let layout = cache.layout();
    let sources = cache.route().sources();
    let mut step = cache.begin_step(&vec![len; layout.batch_size], len)?;
    // Dense attention costs the same whatever the values, so a random block of 64 slots tiled
    // over the context stands in for a prefill (sampling every value took longer than the
    // decode being timed).
    let block = len.min(64);
    let shape = [layout.batch_size, layout.n_kv_heads, block, layout.head_dim];
    let tiles = len.div_ceil(block);
    for layer in sources {
        let random = || {
            Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), device)
                .repeat_dim(2, tiles)
                .slice([
                    0..layout.batch_size,
                    0..layout.n_kv_heads,
                    0..len,
                    0..layout.head_dim,
                ])
        };
        step.put(layer, KeyValue::new(random(), random()))?;
    }
    step.commit()
}

/// Runs `steps` decode steps of one token per sequence (fixed tokens: the benchmark measures
/// the step, not the sampler) and waits for the device.
pub fn decode<B: Backend>(
    model: &RoutedTransformer<B>,
    cache: &mut KvCacheManager<B>,
    steps: usize,
) -> kv_routing::Result<()> {
    let batch = cache.layout().batch_size;
    let tokens: Vec<Vec<u32>> = (0..batch).map(|b| vec![(b % 200) as u32 + 32]).collect();
    let mut logits = None;
    for _ in 0..steps {
        logits = Some(model.forward_cached_last(&tokens, cache)?);
    }
    if let Some(logits) = logits {
        sync(logits);
    }
    Ok(())
}

/// Waits for the device to finish the work queued for `tensor` (`Backend::sync`, with the
/// tensor still alive so that a lazy backend cannot skip producing it).
pub fn sync<B: Backend, const D: usize>(tensor: Tensor<B, D>) {
    B::sync(&tensor.device()).expect("the backend failed to run the benchmark's work");
}

/// A full-sequence forward that projects K/V in **every** layer and then routes — what an
/// implementation pays when it does not skip the projections nobody reads. Equal-length batches.
pub fn forward_computing_all_kv<B: Backend>(
    model: &RoutedTransformer<B>,
    tokens: &[Vec<u32>],
    route: &Route,
) -> kv_routing::Result<Tensor<B, 3>> {
    let (batch, seq_len) = (tokens.len(), tokens[0].len());
    let device = model.device();
    let ids: Vec<i64> = tokens.iter().flatten().map(|&t| t as i64).collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [batch, seq_len]), &device);
    let positions: Vec<usize> = (0..batch).flat_map(|_| 0..seq_len).collect();
    let heads = [model.blocks[0].attention.n_heads, model.n_kv_heads()];
    let rope = model
        .rope
        .angles(&positions, batch, seq_len)?
        .for_heads(&heads);
    let mut x = model.embedding.forward(ids);
    let mut all_kv: Vec<KeyValue<B>> = Vec::with_capacity(model.n_layers());
    for (layer, block) in model.blocks.iter().enumerate() {
        let normed = block.attention_norm.forward(x.clone());
        all_kv.push(block.attention.project_kv(normed.clone(), &rope)?);
        let kv = &all_kv[route.source_of(layer)];
        x = x + block
            .attention
            .attend(normed, kv, &rope, &AttentionMask::Causal)?;
        x = x.clone() + block.mlp.forward(block.mlp_norm.forward(x));
    }
    Ok(model.vocab_logits(x))
}

/// Training steps (forward, backward, AdamW) of a freshly initialized model under routes drawn
/// with probability `p`: the workload of the training benchmarks.
pub struct TrainLoop<B: AutodiffBackend> {
    // `Option` because the optimizer consumes the model and returns the updated one.
    model: Option<RoutedTransformer<B>>,
    optimizer: OptimizerAdaptor<AdamW, RoutedTransformer<B>, B>,
    router: StochasticRouter,
}

impl<B: AutodiffBackend> TrainLoop<B> {
    /// A model from `config` and a router drawing with probability `p` (seed 0).
    pub fn new(
        config: &RoutedTransformerConfig,
        p: f64,
        device: &B::Device,
    ) -> kv_routing::Result<Self> {
        Ok(Self {
            model: Some(config.init::<B>(device)?),
            optimizer: AdamWConfig::new().init(),
            router: StochasticRouter::new(config.n_layers, p, 0)?,
        })
    }

    /// One step on `tokens` (inputs and targets alike: the cost does not depend on them), waiting
    /// for the device; returns the route it drew. With `all_kv`, every layer's K/V is computed
    /// and the unused ones dropped (the naive implementation the benchmark compares against).
    pub fn step(&mut self, tokens: &[Vec<u32>], all_kv: bool) -> kv_routing::Result<Route> {
        let route = self.router.next_route();
        self.step_on(tokens, &route, all_kv)?;
        Ok(route)
    }

    /// One step like [`Self::step`], on a given `route` instead of a drawn one.
    pub fn step_on(
        &mut self,
        tokens: &[Vec<u32>],
        route: &Route,
        all_kv: bool,
    ) -> kv_routing::Result<()> {
        let model = self.model.take().expect("a model between steps");
        let logits = if all_kv {
            forward_computing_all_kv(&model, tokens, route)
        } else {
            model.forward_tokens(tokens, route)
        };
        let logits = match logits {
            Ok(logits) => logits,
            Err(error) => {
                self.model = Some(model);
                return Err(error);
            }
        };
        let loss = kv_routing_train::loss::mean_loss(logits, tokens)?;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let model = self.optimizer.step(1e-4, model, grads);
        sync(model.embedding.weight.val());
        self.model = Some(model);
        Ok(())
    }
}

/// Token ids `(i * 31 + b * 7) % vocab` for `batch` sequences of `len` tokens.
pub fn synthetic_tokens(batch: usize, len: usize, vocab: usize) -> Vec<Vec<u32>> {
    (0..batch)
        .map(|b| {
            (0..len)
                .map(|i| ((i * 31 + b * 7) % vocab) as u32)
                .collect()
        })
        .collect()
}

/// Largest batch of `context`-token sequences whose cache under `plan` fits `budget` bytes.
pub fn batch_within_budget(
    config: &RoutedTransformerConfig,
    plan: &CachePlan,
    context: usize,
    budget: usize,
) -> usize {
    budget / (kv_bytes_per_token(config, plan, burn::tensor::DType::F32) * context)
}

/// Batch of the capacity benchmark: the largest batch of [`CAPACITY_CONTEXT`]-token sequences
/// whose cache under `plan` fits [`kv_budget`].
///
/// # Panics
/// When the budget does not hold one sequence (a benchmark misconfiguration).
pub fn capacity_batch(config: &RoutedTransformerConfig, plan: &CachePlan) -> usize {
    let budget = kv_budget();
    let batch = batch_within_budget(config, plan, CAPACITY_CONTEXT, budget);
    assert!(
        batch > 0,
        "a KV budget of {} does not hold one sequence of {CAPACITY_CONTEXT} tokens",
        budget_label(budget)
    );
    batch
}

/// KV bytes of one token of one sequence in a cache of the float type `float`
/// (`KvCacheLayout::bytes_for`, from the config alone).
pub fn kv_bytes_per_token(
    config: &RoutedTransformerConfig,
    plan: &CachePlan,
    float: burn::tensor::DType,
) -> usize {
    let attention = config.attention_config();
    let head_dim = attention.resolved_head_dim();
    KvCacheLayout {
        batch_size: 1,
        n_layers: config.n_layers,
        n_kv_heads: attention.kv_heads(),
        head_dim,
        capacity: 1,
    }
    .bytes_for(
        &plan.route(),
        kv_routing::KvRowFormat::float(float, head_dim),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kv_routing_backend::{device, Backend};

    #[test]
    fn naive_forward_equals_the_routed_forward() {
        let device = device();
        let config = RoutedTransformerConfig::new(64, 32, 4, 2, 48).with_max_seq_len(32);
        let model = config.init_seeded::<Backend>(1, &device).unwrap();
        let tokens = vec![vec![1, 2, 3, 4, 5], vec![9, 8, 7, 6, 5]];
        let route = Route::new(vec![0, 0, 1, 1]).unwrap();
        let routed: Vec<f32> = model
            .forward_tokens(&tokens, &route)
            .unwrap()
            .into_data()
            .iter()
            .collect();
        let naive: Vec<f32> = forward_computing_all_kv(&model, &tokens, &route)
            .unwrap()
            .into_data()
            .iter()
            .collect();
        let max_diff = routed
            .iter()
            .zip(&naive)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(max_diff < 1e-5, "{max_diff}");
    }

    #[test]
    fn filled_cache_decodes_and_budget_matches_the_cache_manager() {
        let device = device();
        let size = tiny();
        let model = size.config.init::<Backend>(&device).unwrap();
        for (_, plan) in plans(12) {
            let mut cache = model.new_cache(2, 20, plan.route()).unwrap();
            fill_cache(&mut cache, 16, &device).unwrap();
            decode(&model, &mut cache, 4).unwrap();
            assert_eq!(cache.sequence_lengths(), &[20, 20]);
            assert_eq!(
                cache.bytes(),
                kv_bytes_per_token(&size.config, &plan, burn::tensor::DType::F32) * 2 * 20
            );
        }
        let full = CachePlan::full(12).unwrap();
        let quarter = CachePlan::every_kth(12, 4).unwrap();
        assert_eq!(
            kv_bytes_per_token(&size.config, &full, burn::tensor::DType::F32),
            4 * kv_bytes_per_token(&size.config, &quarter, burn::tensor::DType::F32)
        );
        // Whole sequences only, so the batch ratio is 4 up to flooring.
        let full_batch = batch_within_budget(&size.config, &full, 1024, KV_BUDGET);
        let quarter_batch = batch_within_budget(&size.config, &quarter, 1024, KV_BUDGET);
        assert!(full_batch > 0);
        assert!(
            (4 * full_batch..4 * (full_batch + 1)).contains(&quarter_batch),
            "{quarter_batch} vs {full_batch}"
        );
    }
}
