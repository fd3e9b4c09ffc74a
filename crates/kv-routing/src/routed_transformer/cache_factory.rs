//! KV caches laid out for a [`RoutedTransformer`]: its layers, key/value heads and head size,
//! on its device.
//!
//! # Contract
//! A cache made here is one [`RoutedTransformer::forward_cached`] accepts; a budgeted one is
//! refused before any allocation when it would exceed the budget.

use burn::tensor::backend::Backend;

use super::RoutedTransformer;
use crate::kv_cache::{KvCacheLayout, KvCacheManager};
use crate::memory_budget::MemoryBudget;
use crate::route::Route;

impl<B: Backend> RoutedTransformer<B> {
    /// A cache for `batch_size` sequences of up to `capacity` slots under `route`, storing the
    /// model's [`RoutedTransformer::kv_dtype`].
    pub fn new_cache(
        &self,
        batch_size: usize,
        capacity: usize,
        route: Route,
    ) -> crate::Result<KvCacheManager<B>> {
        self.new_cache_within(batch_size, capacity, route, &MemoryBudget::UNLIMITED)
    }

    /// [`RoutedTransformer::new_cache`], refused before any allocation when the cache would
    /// exceed `budget` (the error gives the bytes it needs).
    pub fn new_cache_within(
        &self,
        batch_size: usize,
        capacity: usize,
        route: Route,
        budget: &MemoryBudget,
    ) -> crate::Result<KvCacheManager<B>> {
        KvCacheManager::with_dtype(
            KvCacheLayout {
                batch_size,
                n_layers: self.n_layers(),
                n_kv_heads: self.n_kv_heads(),
                head_dim: self.head_dim(),
                capacity,
            },
            route,
            self.kv_dtype(),
            &self.device(),
            budget,
        )
    }
}
