//! [`KeyValue`]: one layer's rotated keys and values.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use std::sync::Arc;

/// Keys (rotary embedding already applied) and values of one layer.
///
/// A `KeyValue` handed out by a [`KvCacheManager`](crate::KvCacheManager) step is a view of the
/// cache's storage: while it (or a clone) is alive, the cache cannot write that layer in place
/// and its next write copies the whole storage (counted by
/// [`KvCacheManager::copied_writes`](crate::KvCacheManager::copied_writes)). Drop views before
/// the next step.
///
/// # Shapes
/// - key, value: `[batch, n_kv_heads, len, head_dim]`
#[derive(Debug, Clone)]
pub struct KeyValue<B: Backend> {
    /// Rotated keys.
    pub key: Tensor<B, 4>,
    /// Values.
    pub value: Tensor<B, 4>,
    /// Held by views of a cache's storage, so that the cache sees views still alive when it
    /// writes (see the type docs).
    view_of_cache: Option<Arc<()>>,
}

impl<B: Backend> KeyValue<B> {
    /// Pairs keys and values.
    pub fn new(key: Tensor<B, 4>, value: Tensor<B, 4>) -> Self {
        Self {
            key,
            value,
            view_of_cache: None,
        }
    }

    /// Marks this pair as a view of cache storage whose liveness `lease` tracks.
    pub(crate) fn viewing(mut self, lease: Arc<()>) -> Self {
        self.view_of_cache = Some(lease);
        self
    }

    /// Number of key slots.
    pub fn len(&self) -> usize {
        self.key.dims()[2]
    }

    /// Whether there are no key slots.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
