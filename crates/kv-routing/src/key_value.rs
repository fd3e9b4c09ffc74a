//! [`KeyValue`]: one layer's rotated keys and values; [`StoredKv`]: the same as a store holds
//! them, for attention kernels that read a cache's own format in place.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use std::sync::Arc;

use crate::kv_quantization::QuantizedRows;

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

/// Keys/values a layer attends to, in the form its store holds them: floats, or the int8 rows of
/// a quantized cache for a backend whose attention reads them in place (flex), so that a decode
/// step streams one byte a value instead of a widened copy of the history.
#[derive(Debug, Clone)]
pub enum StoredKv<B: Backend> {
    /// Keys and values in a float type: the model's, or the narrower one a cache stores them
    /// in (`KvDtype::Float`) for a backend whose attention widens them as it reads (flex).
    Float(KeyValue<B>),
    /// Keys and values in the int8 format.
    Int8(Int8KeyValue<B>),
}

impl<B: Backend> StoredKv<B> {
    /// The dims of the keys and of the values (the codes' for int8).
    pub fn dims(&self) -> [[usize; 4]; 2] {
        match self {
            Self::Float(kv) => [kv.key.dims(), kv.value.dims()],
            Self::Int8(kv) => [kv.key.codes.dims(), kv.value.codes.dims()],
        }
    }
}

/// Rotated keys and values in the int8 format ([`crate::kv_quantization`]); like a
/// [`KeyValue`] from a cache, a view of its storage (drop it before the next step).
///
/// # Shapes
/// - key, value: codes `[batch, n_kv_heads, len, head_dim]`, scales `[batch, n_kv_heads, len,
///   head_dim / block]`
#[derive(Debug, Clone)]
pub struct Int8KeyValue<B: Backend> {
    /// Rotated keys.
    pub key: QuantizedRows<B>,
    /// Values.
    pub value: QuantizedRows<B>,
    view_of_cache: Option<Arc<()>>,
}

impl<B: Backend> Int8KeyValue<B> {
    /// Pairs keys and values.
    pub fn new(key: QuantizedRows<B>, value: QuantizedRows<B>) -> Self {
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

    /// The keys and values in the float type of the scales.
    pub fn dequantize(&self) -> KeyValue<B> {
        KeyValue::new(self.key.dequantize(), self.value.dequantize())
    }
}
