//! Rotary position embedding in the rotate-half convention used by Llama-family checkpoints.
//!
//! For a head vector `x = [x1, x2]` (two halves of `head_dim / 2`) at position `p`:
//! `rope(x) = [x1 * cos - x2 * sin, x2 * cos + x1 * sin]` with angle `p * theta^(-2i / head_dim)`
//! for the `i`-th pair. The angle table is computed once in f64 on the host, so every backend
//! sees the same angles up to its float precision.

use core::cell::RefCell;

use burn::config::Config;
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::error::KvRoutingError;

/// Configuration of a [`RotaryEmbedding`].
#[derive(Config, Debug)]
pub struct RotaryEmbeddingConfig {
    /// Size of one attention head; must be even.
    pub head_dim: usize,
    /// Number of positions the table covers; positions must stay below it.
    pub max_seq_len: usize,
    /// Base of the rotation frequencies. Default: 10000.
    #[config(default = 10000.0)]
    pub theta: f64,
}

impl RotaryEmbeddingConfig {
    /// Builds the cos/sin tables on `device`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> crate::Result<RotaryEmbedding<B>> {
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(KvRoutingError::InvalidConfig(format!(
                "rotary embedding needs an even, non-zero head_dim, got {}",
                self.head_dim
            )));
        }
        if self.max_seq_len == 0 {
            return Err(KvRoutingError::InvalidConfig(
                "rotary embedding needs max_seq_len >= 1".into(),
            ));
        }
        if !(self.theta > 0.0 && self.theta.is_finite()) {
            return Err(KvRoutingError::InvalidConfig(format!(
                "rotary theta must be positive and finite, got {}",
                self.theta
            )));
        }
        let half = self.head_dim / 2;
        let mut cos = Vec::with_capacity(self.max_seq_len * half);
        let mut sin = Vec::with_capacity(self.max_seq_len * half);
        for position in 0..self.max_seq_len {
            for i in 0..half {
                let frequency = self.theta.powf(-2.0 * i as f64 / self.head_dim as f64);
                let angle = position as f64 * frequency;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let shape = [self.max_seq_len, half];
        Ok(RotaryEmbedding {
            cos: Tensor::from_data(TensorData::new(cos, shape), device),
            sin: Tensor::from_data(TensorData::new(sin, shape), device),
            max_seq_len: self.max_seq_len,
            head_dim: self.head_dim,
        })
    }
}

/// Precomputed rotary tables (constants, not parameters).
#[derive(Module, Debug)]
pub struct RotaryEmbedding<B: Backend> {
    /// `cos` of every position's angles, `[max_seq_len, head_dim / 2]`.
    cos: Tensor<B, 2>,
    /// `sin` of every position's angles, `[max_seq_len, head_dim / 2]`.
    sin: Tensor<B, 2>,
    max_seq_len: usize,
    head_dim: usize,
}

impl<B: Backend> RotaryEmbedding<B> {
    /// Number of positions covered.
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    /// Head size the table was built for.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Gathers the angles of `positions` (row-major `[batch, seq_len]`) once, for every layer of
    /// a step to reuse.
    pub fn angles(
        &self,
        positions: &[usize],
        batch: usize,
        seq_len: usize,
    ) -> crate::Result<RopeAngles<B>> {
        if positions.len() != batch * seq_len {
            return Err(KvRoutingError::ShapeMismatch {
                context: "rotary positions".into(),
                expected: vec![batch, seq_len],
                actual: vec![positions.len()],
            });
        }
        if let Some((index, &position)) = positions
            .iter()
            .enumerate()
            .find(|(_, &p)| p >= self.max_seq_len)
        {
            return Err(KvRoutingError::SequenceTooLong {
                sequence: index / seq_len.max(1),
                position,
                max_seq_len: self.max_seq_len,
            });
        }
        let device = self.cos.device();
        let indices: Vec<i64> = positions.iter().map(|&p| p as i64).collect();
        let indices =
            Tensor::<B, 1, Int>::from_data(TensorData::new(indices, [positions.len()]), &device);
        // Full-width tables: `[cos, cos]` and `[-sin, sin]`, so that applying them is two
        // same-shape products and a sum (see `RopeAngles::apply`).
        let gather = |table: &Tensor<B, 2>, sign: f64| {
            let rows = table.clone().select(0, indices.clone());
            Tensor::cat(vec![rows.clone().mul_scalar(sign), rows], 1).reshape([
                batch,
                seq_len,
                1,
                self.head_dim,
            ])
        };
        Ok(RopeAngles {
            cos: gather(&self.cos, 1.0),
            sin: gather(&self.sin, -1.0),
            per_heads: RefCell::new(Vec::new()),
        })
    }
}

/// The rotation of one step's positions: `[cos, cos]` and `[-sin, sin]` per position,
/// `[batch, seq_len, 1, head_dim]`, plus copies widened to each head count seen.
#[derive(Debug, Clone)]
pub struct RopeAngles<B: Backend> {
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
    /// `(heads, cos, sin)` with the tables repeated to `[batch, seq_len, heads, head_dim]`:
    /// elementwise ops on equal, contiguous shapes take every backend's fast path, where a
    /// broadcast over heads falls back to strided loops on some CPU backends.
    per_heads: RefCell<Vec<WidenedAngles<B>>>,
}

/// `(heads, cos, sin)`, the tables repeated over `heads`.
type WidenedAngles<B> = (usize, Tensor<B, 4>, Tensor<B, 4>);

impl<B: Backend> RopeAngles<B> {
    /// Rotates `x`: `x * [cos, cos] + [x2, x1] * [-sin, sin]`, which is
    /// `[x1 * cos - x2 * sin, x2 * cos + x1 * sin]`.
    ///
    /// # Shapes
    /// - x: `[batch, seq_len, heads, head_dim]` (heads next to head_dim, as projections produce)
    /// - output: `[batch, seq_len, heads, head_dim]`
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, seq_len, heads, head_dim] = x.dims();
        let half = head_dim / 2;
        let (cos, sin) = self.widened(heads);
        let x1 = x.clone().slice([0..batch, 0..seq_len, 0..heads, 0..half]);
        let x2 = x
            .clone()
            .slice([0..batch, 0..seq_len, 0..heads, half..head_dim]);
        let swapped = Tensor::cat(vec![x2, x1], 3);
        x * cos + swapped * sin
    }

    fn widened(&self, heads: usize) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let mut per_heads = self.per_heads.borrow_mut();
        if let Some((_, cos, sin)) = per_heads.iter().find(|(h, _, _)| *h == heads) {
            return (cos.clone(), sin.clone());
        }
        let cos = self.cos.clone().repeat_dim(2, heads);
        let sin = self.sin.clone().repeat_dim(2, heads);
        per_heads.push((heads, cos.clone(), sin.clone()));
        (cos, sin)
    }

    /// Number of positions per sequence these angles cover.
    pub fn seq_len(&self) -> usize {
        self.cos.dims()[1]
    }

    /// Batch size these angles cover.
    pub fn batch_size(&self) -> usize {
        self.cos.dims()[0]
    }
}
