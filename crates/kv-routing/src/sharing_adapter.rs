//! Sharing adapters: low-rank weights that only a pass which shares keys/values uses.
//!
//! Fine-tuning a pretrained model's own weights for routing pulls its full cache away from the
//! model it was (docs/results.md: +42% full-cache perplexity when every step serves every:2),
//! and holding it back with a full-plan term costs the shared paths their progress. A sharing
//! adapter keeps the two apart: every projection of every block (query, key, value, output,
//! gate, up, down) gets a low-rank delta `x A B · (alpha / rank)` that is added only when the
//! pass's route *shares* (some layer reads another layer's keys/values). Under the full plan
//! the deltas are not evaluated, so the model is bit for bit the one it was; under any sharing
//! plan the whole stack, the layers that keep their cache included, can adapt to it (a source
//! layer's keys/values may change, since only sharing passes read them with the delta).
//!
//! # Contract
//! - A route that shares no layer adds no delta anywhere: logits, caches and speed are those of
//!   the model without adapters.
//! - A route that shares adds every projection's delta in every block. In a batch whose groups
//!   run different routes ([`crate::MixedPlanCache`]), a row adds the deltas only where its own
//!   group's route shares ([`AdapterRows::Masked`]).
//! - `up` (`B`) starts at zero: a fresh adapter changes nothing under any plan until trained.
//!   `down` (`A`) is drawn on the host from the configuration's seed, uniform in
//!   `±1/sqrt(in)` (LoRA's initialization), the same on every backend.
//! - Training a model that has adapters trains only them
//!   ([`crate::RoutedTransformer::with_only_sharing_adapters_trainable`]).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Uniform};

use crate::error::KvRoutingError;
use crate::projection::matmul_last_axis;

/// The sharing adapters of a model: their rank and scale. Saved in the model's configuration.
#[derive(Config, Debug, PartialEq)]
pub struct SharingAdapterConfig {
    /// Rank of every delta (LoRA's `r`).
    pub rank: usize,
    /// LoRA's `alpha`: deltas are scaled by `alpha / rank`. Default: `rank` (scale 1).
    #[config(default = "None")]
    pub alpha: Option<f64>,
    /// Seed of the host-drawn `down` matrices. Default: 0.
    #[config(default = 0)]
    pub seed: u64,
}

impl SharingAdapterConfig {
    /// The factor every delta is multiplied by, `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha.unwrap_or(self.rank as f64) / self.rank as f64
    }

    /// Checks the rank and scale.
    pub fn validate(&self) -> crate::Result<()> {
        if self.rank == 0 {
            return Err(KvRoutingError::InvalidConfig(
                "a sharing adapter's rank must be >= 1".into(),
            ));
        }
        if !self.scale().is_finite() || self.alpha.is_some_and(|a| a <= 0.0) {
            return Err(KvRoutingError::InvalidConfig(format!(
                "a sharing adapter's alpha must be positive and finite, got {:?}",
                self.alpha
            )));
        }
        Ok(())
    }

    /// Parameters of one delta for a `[d_input, d_output]` projection (`None` on overflow).
    pub fn delta_parameters(&self, d_input: usize, d_output: usize) -> Option<usize> {
        d_input.checked_add(d_output)?.checked_mul(self.rank)
    }

    /// A delta for a `[d_input, d_output]` projection: `up` zero, `down` drawn from `stream`
    /// (the model's adapters share one stream, in block and projection order).
    pub(crate) fn init_delta<B: Backend>(
        &self,
        d_input: usize,
        d_output: usize,
        stream: &mut ChaCha8Rng,
        device: &B::Device,
    ) -> LowRankDelta<B> {
        let bound = 1.0 / (d_input as f64).sqrt();
        let uniform = Uniform::new_inclusive(-bound, bound).expect("a finite, ordered range");
        let down: Vec<f64> = (0..d_input * self.rank)
            .map(|_| uniform.sample(stream))
            .collect();
        LowRankDelta {
            down: Param::from_tensor(Tensor::from_data(
                TensorData::new(down, [d_input, self.rank]),
                device,
            )),
            up: Param::from_tensor(Tensor::zeros([self.rank, d_output], device)),
            scale: self.scale(),
        }
    }

    /// The host stream the adapters' `down` matrices are drawn from.
    pub(crate) fn stream(&self) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(self.seed)
    }
}

/// A low-rank delta `x · down · up · scale` added to a projection on sharing passes.
#[derive(Module, Debug)]
pub struct LowRankDelta<B: Backend> {
    /// `[in, rank]`.
    pub down: Param<Tensor<B, 2>>,
    /// `[rank, out]`.
    pub up: Param<Tensor<B, 2>>,
    /// `alpha / rank`.
    pub scale: f64,
}

impl<B: Backend> LowRankDelta<B> {
    /// `x · down · up · scale`.
    ///
    /// # Shapes
    /// - x: `[..., in]`
    /// - output: `[..., out]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let low = matmul_last_axis(x, self.down.val());
        matmul_last_axis(low, self.up.val()).mul_scalar(self.scale)
    }
}

/// Which rows of a pass add their projections' sharing deltas.
#[derive(Clone, Debug)]
pub enum AdapterRows<B: Backend> {
    /// None: the route shares no layer (or the model has no adapters).
    None,
    /// Every row: the route shares.
    All,
    /// The rows where the mask (`[batch, 1, 1]`, 1 or 0) is 1: a batch of groups with routes
    /// of their own, some sharing and some not.
    Masked(Tensor<B, 3>),
}

impl<B: Backend> AdapterRows<B> {
    /// The rows of a pass under one route.
    pub fn for_route(route: &crate::Route) -> Self {
        if route.shares() {
            Self::All
        } else {
            Self::None
        }
    }

    /// The rows of a batch of `groups` (their row counts in order, each with whether its route
    /// shares).
    pub fn for_groups(groups: &[(usize, bool)], device: &B::Device) -> Self {
        if groups.iter().all(|&(_, shares)| !shares) {
            return Self::None;
        }
        if groups.iter().all(|&(_, shares)| shares) {
            return Self::All;
        }
        let mask: Vec<f32> = groups
            .iter()
            .flat_map(|&(rows, shares)| std::iter::repeat_n(f32::from(u8::from(shares)), rows))
            .collect();
        let rows = mask.len();
        Self::Masked(Tensor::from_data(
            TensorData::new(mask, [rows, 1, 1]),
            device,
        ))
    }

    /// `y` plus `delta`'s contribution for `x` on these rows.
    ///
    /// # Shapes
    /// - x: `[batch, seq_len, in]`
    /// - y: `[batch, seq_len, out]`
    pub(crate) fn add(
        &self,
        delta: &LowRankDelta<B>,
        x: Tensor<B, 3>,
        y: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        match self {
            Self::None => y,
            Self::All => y + delta.forward(x),
            Self::Masked(mask) => {
                let dtype = y.dtype();
                y + delta.forward(x) * mask.clone().cast(dtype)
            }
        }
    }
}
