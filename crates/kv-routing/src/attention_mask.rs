//! Which keys each query may see.
//!
//! Queries are always the *last* `q_len` of the `k_len` key slots (a prefill chunk or a decode
//! token appended after the history), so causality is aligned bottom-right: query `i` may see key
//! slots `0..=k_len - q_len + i`. Aligning it top-left instead (a bug seen in peers) would hide
//! the whole history from a decode token.

use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::error::{KvRoutingError, Result};

/// The mask of one attention step.
#[derive(Debug, Clone)]
pub enum AttentionMask<B: Backend> {
    /// Causal only, aligned bottom-right; every key slot holds a real token.
    Causal,
    /// Causal and key validity combined: `[batch, 1, q_len, k_len]`, `true` = hidden.
    Explicit(Tensor<B, 4, Bool>),
    /// Causal, with some key slots holding no token of their sequence (the holes that shorter
    /// prompts and finished sequences leave in a batch's cache): the same mask as `Explicit`,
    /// plus the validity on the host, which a backend's own attention kernel applies as it
    /// attends (so that such a batch keeps the fast path) where Burn's ops use the tensor.
    CausalWithHoles(KeyHoles<B>),
}

/// The key validity of a [`AttentionMask::CausalWithHoles`] step.
#[derive(Debug, Clone)]
pub struct KeyHoles<B: Backend> {
    /// Row-major `[batch, k_len]`: `true` = the slot holds a token of that sequence.
    key_valid: Arc<[bool]>,
    /// The causal mask and the holes combined, `[batch, 1, q_len, k_len]`, `true` = hidden.
    hidden: Tensor<B, 4, Bool>,
}

impl<B: Backend> KeyHoles<B> {
    /// Row-major `[batch, k_len]` validity: `true` = the slot holds a token of that sequence.
    pub fn key_valid(&self) -> &[bool] {
        &self.key_valid
    }

    /// The whole mask as one tensor, `[batch, 1, q_len, k_len]`, `true` = hidden.
    pub fn hidden(&self) -> &Tensor<B, 4, Bool> {
        &self.hidden
    }
}

impl<B: Backend> AttentionMask<B> {
    /// The mask as one tensor, `[batch, 1, q_len, k_len]` (`true` = hidden), for every mask but
    /// the plain causal one (which needs none).
    pub fn hidden_tensor(&self) -> Option<&Tensor<B, 4, Bool>> {
        match self {
            Self::Causal => None,
            Self::Explicit(hidden) => Some(hidden),
            Self::CausalWithHoles(holes) => Some(&holes.hidden),
        }
    }
}

impl<B: Backend> AttentionMask<B> {
    /// Bottom-right causal mask plus per-sequence key validity.
    ///
    /// `key_valid` is row-major `[batch, k_len]`: `false` marks a slot that holds no token of
    /// that sequence (padding of a shorter prompt), which no query of that sequence may see.
    /// When every slot is valid this is plain [`AttentionMask::Causal`], otherwise
    /// [`AttentionMask::CausalWithHoles`].
    pub fn causal_with_key_validity(
        key_valid: &[bool],
        batch: usize,
        q_len: usize,
        k_len: usize,
        device: &B::Device,
    ) -> Result<Self> {
        if key_valid.len() != batch * k_len {
            return Err(KvRoutingError::ShapeMismatch {
                context: "key validity mask".into(),
                expected: vec![batch, k_len],
                actual: vec![key_valid.len()],
            });
        }
        if q_len > k_len {
            return Err(KvRoutingError::ShapeMismatch {
                context: "attention mask (queries must not outnumber keys)".into(),
                expected: vec![k_len],
                actual: vec![q_len],
            });
        }
        if key_valid.iter().all(|&v| v) {
            return Ok(Self::Causal);
        }
        let shape = [batch, 1, q_len, k_len];
        let key_hidden: Vec<bool> = key_valid.iter().map(|&v| !v).collect();
        let key_hidden = Tensor::<B, 4, Bool>::from_data(
            TensorData::new(key_hidden, [batch, 1, 1, k_len]),
            device,
        )
        .expand(shape);
        Ok(Self::CausalWithHoles(KeyHoles {
            key_valid: key_valid.into(),
            hidden: causal_hidden::<B>(q_len, k_len, device)
                .expand(shape)
                .bool_or(key_hidden),
        }))
    }
}

/// `[1, 1, q_len, k_len]`, `true` where key `j` lies in the future of query `i`
/// (`j > k_len - q_len + i`).
pub(crate) fn causal_hidden<B: Backend>(
    q_len: usize,
    k_len: usize,
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let offset = (k_len - q_len) as i64;
    let last_visible = Tensor::<B, 1, Int>::arange(offset..offset + q_len as i64, device)
        .reshape([q_len, 1])
        .expand([q_len, k_len]);
    let keys = Tensor::<B, 1, Int>::arange(0..k_len as i64, device)
        .reshape([1, k_len])
        .expand([q_len, k_len]);
    keys.greater(last_visible).reshape([1, 1, q_len, k_len])
}
