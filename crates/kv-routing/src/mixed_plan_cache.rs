//! [`MixedPlanCache`]: the KV cache of a batch whose sequences each keep their own plan.
//!
//! A serving batch need not share one plan: a request that needs its whole context keeps every
//! layer, one that tolerates sharing keeps every 4th. The sequences of one route form a *plan
//! group* with a [`KvCacheManager`] of its own, which stores that route's source layers for
//! those sequences only; a sequence's bytes are exactly its route's
//! ([`KvCacheLayout::bytes_for`](crate::KvCacheLayout::bytes_for) for one sequence).
//!
//! # One forward for the batch
//! [`RoutedTransformer::forward_mixed_last`](crate::RoutedTransformer::forward_mixed_last) runs
//! the block loop once: the feed-forward blocks (three quarters of a Llama layer's weights) on
//! the whole batch, each layer's attention once per group on its rows, under its route. Inside
//! the cache the sequences are ordered by group, so a group's rows are one slice of the batch;
//! logits come back in the order of the requests.
//!
//! # Invariants
//! 1. Every sequence belongs to exactly one group; a group's route is its sequences' route.
//! 2. Group caches advance together: every step appends `step_len` slots to every group (a
//!    sequence that brings fewer tokens leaves holes), so all groups have the same `len`; a
//!    sequence given a route of its own mid-generation
//!    ([`MixedPlanCache::retarget_sequence`]) keeps its slots in a group of its own.
//! 3. [`MixedPlanCache::bytes`] is the sum of the groups' [`KvCacheManager::bytes`].

use burn::tensor::backend::Backend;

use crate::error::{KvRoutingError, Result};
use crate::kv_cache::KvCacheManager;
use crate::route::Route;

/// The KV cache of a batch in which each sequence has its own route. See the module docs.
#[derive(Debug)]
pub struct MixedPlanCache<B: Backend> {
    pub(crate) groups: Vec<PlanGroup<B>>,
    /// The request index of each sequence in group order.
    pub(crate) order: Vec<usize>,
}

/// The sequences of one route and their cache.
#[derive(Debug)]
pub(crate) struct PlanGroup<B: Backend> {
    /// Request indices, ascending.
    pub(crate) sequences: Vec<usize>,
    pub(crate) cache: KvCacheManager<B>,
}

impl<B: Backend> MixedPlanCache<B> {
    /// Groups `routes` (one per sequence) by route, in order of first appearance, and makes
    /// each group's cache with `new_cache(route, sequences)`.
    pub(crate) fn build(
        routes: &[Route],
        mut new_cache: impl FnMut(&Route, usize) -> Result<KvCacheManager<B>>,
    ) -> Result<Self> {
        if routes.is_empty() {
            return Err(KvRoutingError::InvalidLengths(
                "a mixed-plan cache needs at least one sequence".into(),
            ));
        }
        let mut distinct: Vec<(&Route, Vec<usize>)> = Vec::new();
        for (sequence, route) in routes.iter().enumerate() {
            match distinct.iter_mut().find(|(r, _)| *r == route) {
                Some((_, sequences)) => sequences.push(sequence),
                None => distinct.push((route, vec![sequence])),
            }
        }
        let groups = distinct
            .into_iter()
            .map(|(route, sequences)| {
                Ok(PlanGroup {
                    cache: new_cache(route, sequences.len())?,
                    sequences,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let order = groups.iter().flat_map(|g| g.sequences.clone()).collect();
        Ok(Self { groups, order })
    }

    /// Sequences in the batch.
    pub fn batch_size(&self) -> usize {
        self.order.len()
    }

    /// Each sequence's route, in request order.
    pub fn routes(&self) -> Vec<Route> {
        let mut routes = vec![None; self.batch_size()];
        for group in &self.groups {
            for &sequence in &group.sequences {
                routes[sequence] = Some(group.cache.route().clone());
            }
        }
        routes
            .into_iter()
            .map(|r| r.expect("every sequence has a group"))
            .collect()
    }

    /// Distinct routes (plan groups) in the batch.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Slots written so far (shared by every group).
    pub fn len(&self) -> usize {
        self.groups[0].cache.len()
    }

    /// Whether nothing has been appended yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tokens held per sequence, in request order.
    pub fn sequence_lengths(&self) -> Vec<usize> {
        let mut lengths = vec![0; self.batch_size()];
        for group in &self.groups {
            for (i, &sequence) in group.sequences.iter().enumerate() {
                lengths[sequence] = group.cache.sequence_lengths()[i];
            }
        }
        lengths
    }

    /// Bytes held for each sequence, in request order: its group's bytes shared equally (every
    /// sequence of a group holds the same layers and slots).
    pub fn bytes_per_sequence(&self) -> Vec<usize> {
        let mut bytes = vec![0; self.batch_size()];
        for group in &self.groups {
            let share = group.cache.bytes() / group.sequences.len();
            for &sequence in &group.sequences {
                bytes[sequence] = share;
            }
        }
        bytes
    }

    /// Switches sequence `sequence` (request order) to `route`, whose sources must all be
    /// cached for it already: the sequence leaves its group for a group of its own (its rows
    /// copied once, the group's others untouched) and its cache drops every layer `route` does
    /// not read ([`KvCacheManager::retarget`]). Fails, changing nothing, for a sequence outside
    /// the batch or a route that needs a layer the sequence does not cache.
    pub fn retarget_sequence(&mut self, sequence: usize, route: Route) -> Result<()> {
        let (g, index) = self
            .groups
            .iter()
            .enumerate()
            .find_map(|(g, group)| {
                group
                    .sequences
                    .iter()
                    .position(|&s| s == sequence)
                    .map(|i| (g, i))
            })
            .ok_or_else(|| {
                KvRoutingError::InvalidLengths(format!(
                    "sequence {sequence} is not in this batch of {}",
                    self.batch_size()
                ))
            })?;
        let group = &mut self.groups[g];
        route.check_layers(group.cache.layout().n_layers)?;
        let cached = group.cache.cached_layers();
        if let Some(layer) = route.sources().into_iter().find(|l| !cached.contains(l)) {
            return Err(KvRoutingError::MissingKv {
                layer,
                reason: format!(
                    "is a source of the new route {route} but sequence {sequence} does not cache it (its layers: {cached:?})"
                ),
            });
        }
        if group.sequences.len() == 1 {
            return group.cache.retarget(route);
        }
        let mut own = group.cache.take_sequence(index)?;
        group.sequences.remove(index);
        own.retarget(route)?;
        self.groups.push(PlanGroup {
            sequences: vec![sequence],
            cache: own,
        });
        self.order = self
            .groups
            .iter()
            .flat_map(|g| g.sequences.clone())
            .collect();
        Ok(())
    }

    /// Bytes held by each layer, summed over the groups (zero for a layer no sequence caches).
    pub fn bytes_per_layer(&self) -> Vec<usize> {
        let mut bytes = vec![0; self.groups[0].cache.layout().n_layers];
        for group in &self.groups {
            for (total, layer) in bytes.iter_mut().zip(group.cache.bytes_per_layer()) {
                *total += layer;
            }
        }
        bytes
    }

    /// Total bytes held.
    pub fn bytes(&self) -> usize {
        self.groups.iter().map(|g| g.cache.bytes()).sum()
    }
}
