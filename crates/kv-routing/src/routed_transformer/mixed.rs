//! Forward passes of a batch in which each sequence has its own plan, through a
//! [`MixedPlanCache`].
//!
//! # Contract
//! - Each sequence's logits are those it gets alone under its own route (cached or not), to
//!   float rounding: attention runs per plan group on its rows, everything else on the batch.
//! - A call is all-or-nothing: the groups' steps are validated before anything runs and
//!   committed only once every block has run.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::RoutedTransformer;
use crate::attention::BlockGroup;
use crate::error::{KvRoutingError, Result};
use crate::kernels::on_compute_threads;
use crate::kv_cache::KvCacheManager;
use crate::kv_store::KvStore;
use crate::memory_budget::MemoryBudget;
use crate::mixed_plan_cache::MixedPlanCache;
use crate::route::Route;
use crate::sharing_adapter::AdapterRows;

impl<B: Backend> RoutedTransformer<B> {
    /// A cache for a batch in which sequence `b` keeps the layers of `routes[b]`, up to
    /// `capacity` slots each, refused before any allocation when all of it would exceed
    /// `budget`.
    pub fn new_mixed_cache(
        &self,
        routes: &[Route],
        capacity: usize,
        budget: &MemoryBudget,
    ) -> Result<MixedPlanCache<B>> {
        let mut needed = Some(0u128);
        for route in routes {
            let per_token = self.kv_bytes_per_token(route)? as u128;
            needed = needed
                .zip(per_token.checked_mul(capacity as u128))
                .and_then(|(sum, bytes)| sum.checked_add(bytes));
        }
        budget.check(
            &format!(
                "a mixed-plan KV cache of {} sequences x {capacity} slots",
                routes.len()
            ),
            needed,
        )?;
        MixedPlanCache::build(routes, |route, sequences| {
            self.new_cache(sequences, capacity, route.clone())
        })
    }

    /// Cached forward of a mixed-plan batch: appends `tokens[b]` to sequence `b` under its own
    /// route and returns the logits of each sequence's last new token, in request order (rows
    /// of sequences that brought no token are meaningless).
    ///
    /// # Shapes
    /// - output: `[batch, vocab_size]`
    pub fn forward_mixed_last(
        &self,
        tokens: &[Vec<u32>],
        cache: &mut MixedPlanCache<B>,
    ) -> Result<Tensor<B, 2>> {
        if tokens.len() != cache.batch_size() {
            return Err(KvRoutingError::ShapeMismatch {
                context: "tokens per sequence for a mixed-plan step (one entry per sequence)"
                    .into(),
                expected: vec![cache.batch_size()],
                actual: vec![tokens.len()],
            });
        }
        let in_group_order: Vec<Vec<u32>> =
            cache.order.iter().map(|&s| tokens[s].clone()).collect();
        let mut groups: Vec<_> = cache
            .groups
            .iter_mut()
            .map(|group| (group.sequences.len(), &mut group.cache))
            .collect();
        let last = self.forward_groups_last(&in_group_order, &mut groups)?;
        // Request b's row, from its place in group order.
        let batch = tokens.len();
        let mut position = vec![0i64; batch];
        for (row, &sequence) in cache.order.iter().enumerate() {
            position[sequence] = row as i64;
        }
        let position =
            Tensor::<B, 1, Int>::from_data(TensorData::new(position, [batch]), &self.device());
        Ok(last.select(0, position))
    }

    /// The cached step of consecutive groups of a batch, each with its own cache (and route):
    /// `groups[g] = (sequences, cache)` takes the next `sequences` rows of `tokens`. Attention
    /// runs once per group, everything else once on the batch; every group's step is begun
    /// (validated) before anything runs and committed once every block has run. Returns the
    /// logits of each sequence's last new token in the order of `tokens`.
    ///
    /// # Shapes
    /// - output: `[tokens.len(), vocab_size]`
    pub(crate) fn forward_groups_last(
        &self,
        tokens: &[Vec<u32>],
        groups: &mut [(usize, &mut KvCacheManager<B>)],
    ) -> Result<Tensor<B, 2>> {
        if groups.iter().map(|(n, _)| n).sum::<usize>() != tokens.len() {
            return Err(KvRoutingError::ShapeMismatch {
                context: "sequences of the groups of a step".into(),
                expected: vec![tokens.len()],
                actual: vec![groups.iter().map(|(n, _)| n).sum()],
            });
        }
        for (_, cache) in groups.iter() {
            self.check_merged_route(cache.route())?;
        }
        let (ids, _, step_len) = self.token_tensor(tokens)?;
        let mut steps = Vec::with_capacity(groups.len());
        let mut first = 0;
        for (sequences, cache) in groups.iter_mut() {
            self.check_cache_layout(cache)?;
            let rows = cache_rows(*sequences, &mut first);
            let new_tokens: Vec<usize> = tokens[rows.clone()].iter().map(Vec::len).collect();
            steps.push((rows, cache.begin_step(&new_tokens, step_len)?));
        }
        let mut parts = Vec::with_capacity(steps.len());
        for (rows, step) in &steps {
            let rope = self.angles(step.positions(), rows.len(), step_len)?;
            parts.push((rows.clone(), rope, step.mask()?));
        }
        // Which rows add the sharing deltas: the same in every layer of the step.
        let shares: Vec<(usize, bool)> = steps
            .iter()
            .map(|(rows, step)| (rows.len(), step.route().shares()))
            .collect();
        let adapter_rows = AdapterRows::for_groups(&shares, &self.device());
        let hidden = on_compute_threads::<B, _>(|| {
            let mut x = self.embed(ids);
            for (layer, block) in self.blocks.iter().enumerate() {
                let mut groups: Vec<_> = parts
                    .iter()
                    .zip(steps.iter_mut())
                    .map(|((rows, rope, mask), (_, store))| BlockGroup {
                        rows: rows.clone(),
                        rope,
                        mask,
                        store,
                    })
                    .collect();
                x = block.forward_grouped(layer, x, &mut groups, &adapter_rows)?;
            }
            Ok::<_, KvRoutingError>(x)
        })?;
        for (_, step) in steps {
            step.commit()?;
        }
        Ok(self.last_token_logits(hidden, tokens))
    }
}

/// The next `count` rows from `*first`, advancing it.
fn cache_rows(count: usize, first: &mut usize) -> std::ops::Range<usize> {
    let rows = *first..*first + count;
    *first += count;
    rows
}
