//! [`KeyValue`]: one layer's rotated keys and values.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Keys (rotary embedding already applied) and values of one layer.
///
/// # Shapes
/// - key, value: `[batch, n_kv_heads, len, head_dim]`
#[derive(Debug, Clone)]
pub struct KeyValue<B: Backend> {
    /// Rotated keys.
    pub key: Tensor<B, 4>,
    /// Values.
    pub value: Tensor<B, 4>,
}

impl<B: Backend> KeyValue<B> {
    /// Pairs keys and values.
    pub fn new(key: Tensor<B, 4>, value: Tensor<B, 4>) -> Self {
        Self { key, value }
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
