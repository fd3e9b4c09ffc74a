//! Rotary position embedding in the rotate-half convention used by Llama-family checkpoints.
//!
//! For a head vector `x = [x1, x2]` (two halves of `head_dim / 2`) at position `p`:
//! `rope(x) = [x1 * cos - x2 * sin, x2 * cos + x1 * sin]` with angle `p * theta^(-2i / head_dim)`
//! for the `i`-th pair (before an optional [`RopeScaling`]). This is the rotation of Hugging
//! Face's `rotate_half`, so Llama-family checkpoints load without permuting their q/k weights.
//! The angle table is computed once in f64 on the host, so every backend sees the same angles up
//! to its float precision.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use serde::{Deserialize, Serialize};

use crate::error::KvRoutingError;

/// Frequency scaling of rotary embeddings for context extension, as in Hugging Face's
/// `rope_scaling` (`rope_type` names the variant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Every frequency divided by `factor` (position interpolation).
    Linear {
        /// Divisor of the frequencies, >= 1.
        factor: f64,
    },
    /// Llama 3.1's scaling: long wavelengths divided by `factor`, short ones kept, a smooth
    /// blend between `low_freq_factor` and `high_freq_factor`.
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// Context length of the original training.
        original_max_position_embeddings: usize,
    },
}

impl RopeScaling {
    fn validate(&self) -> crate::Result<()> {
        let valid = match *self {
            RopeScaling::Linear { factor } => factor.is_finite() && factor >= 1.0,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                factor.is_finite()
                    && factor >= 1.0
                    && low_freq_factor > 0.0
                    && high_freq_factor.is_finite()
                    && high_freq_factor > low_freq_factor
                    && original_max_position_embeddings > 0
            }
        };
        if valid {
            Ok(())
        } else {
            Err(KvRoutingError::InvalidConfig(format!(
                "invalid rope scaling {self:?}: factors must be finite, factor >= 1, \
                 0 < low_freq_factor < high_freq_factor"
            )))
        }
    }

    /// The scaled version of one inverse frequency (radians per position).
    fn scale(&self, frequency: f64) -> f64 {
        match *self {
            RopeScaling::Linear { factor } => frequency / factor,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let original = original_max_position_embeddings as f64;
                let wavelength = 2.0 * std::f64::consts::PI / frequency;
                if wavelength < original / high_freq_factor {
                    frequency
                } else if wavelength > original / low_freq_factor {
                    frequency / factor
                } else {
                    let smooth = (original / wavelength - low_freq_factor)
                        / (high_freq_factor - low_freq_factor);
                    (1.0 - smooth) * frequency / factor + smooth * frequency
                }
            }
        }
    }
}

/// Most values one rotary table may hold (1 GiB in f32): far beyond released models (Llama 3.1's
/// 128K positions x 64 frequencies is 8.4M), so a larger table comes from a corrupted
/// configuration and is refused before it is allocated.
pub const MAX_TABLE_VALUES: usize = 1 << 28;

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
    /// Frequency scaling for context extension. Default: none.
    #[config(default = "None")]
    pub scaling: Option<RopeScaling>,
}

impl RotaryEmbeddingConfig {
    /// The rotation frequency of each of the `head_dim / 2` pairs: `theta^(-2i / head_dim)`,
    /// then scaled.
    pub fn inverse_frequencies(&self) -> Vec<f64> {
        (0..self.head_dim / 2)
            .map(|i| {
                let frequency = self.theta.powf(-2.0 * i as f64 / self.head_dim as f64);
                match &self.scaling {
                    Some(scaling) => scaling.scale(frequency),
                    None => frequency,
                }
            })
            .collect()
    }

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
        if let Some(scaling) = &self.scaling {
            scaling.validate()?;
        }
        let half = self.head_dim / 2;
        let table_values = self
            .max_seq_len
            .checked_mul(half)
            .filter(|&n| n <= MAX_TABLE_VALUES)
            .ok_or_else(|| {
                KvRoutingError::InvalidConfig(format!(
                    "rotary tables of {} positions x {half} frequencies exceed {MAX_TABLE_VALUES} values each; lower max_seq_len",
                    self.max_seq_len
                ))
            })?;
        let frequencies = self.inverse_frequencies();
        // Angles in f64 (positions times small frequencies lose digits in f32), tables in f32:
        // what the backend stores, at half the host memory of f64.
        let mut cos = Vec::with_capacity(table_values);
        let mut sin = Vec::with_capacity(table_values);
        for position in 0..self.max_seq_len {
            for &frequency in &frequencies {
                let angle = position as f64 * frequency;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
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
            widened: Vec::new(),
        })
    }
}

/// The rotation of one step's positions: `[cos, cos]` and `[-sin, sin]` per position,
/// `[batch, seq_len, 1, head_dim]`, plus copies widened to the head counts named by
/// [`RopeAngles::for_heads`].
#[derive(Debug, Clone)]
pub struct RopeAngles<B: Backend> {
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
    /// `(heads, cos, sin)` with the tables repeated to `[batch, seq_len, heads, head_dim]`:
    /// elementwise ops on equal, contiguous shapes take every backend's fast path, where a
    /// broadcast over heads falls back to strided loops on some CPU backends.
    /// Built once, before the layers run (no interior mutability: angles are shared by `&`).
    widened: Vec<WidenedAngles<B>>,
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
        // The backend's one-pass rotation where it has one (flex f32, and its autodiff form).
        if let Some(rotated) = crate::kernels::rotary(&x, &self.cos, &self.sin) {
            return rotated;
        }
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

    /// Precomputes the tables widened to each of `heads` (a model's query and key/value head
    /// counts), which [`RopeAngles::apply`] then uses for inputs with that many heads; other head
    /// counts broadcast the narrow tables (same result, slower on some CPU backends).
    pub fn for_heads(mut self, heads: &[usize]) -> Self {
        for &count in heads {
            if count > 0 && !self.widened.iter().any(|(h, _, _)| *h == count) {
                let cos = self.cos.clone().repeat_dim(2, count);
                let sin = self.sin.clone().repeat_dim(2, count);
                self.widened.push((count, cos, sin));
            }
        }
        self
    }

    fn widened(&self, heads: usize) -> (Tensor<B, 4>, Tensor<B, 4>) {
        match self.widened.iter().find(|(h, _, _)| *h == heads) {
            Some((_, cos, sin)) => (cos.clone(), sin.clone()),
            None => {
                let [batch, seq_len, _, head_dim] = self.cos.dims();
                let shape = [batch, seq_len, heads, head_dim];
                (
                    self.cos.clone().expand(shape),
                    self.sin.clone().expand(shape),
                )
            }
        }
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
