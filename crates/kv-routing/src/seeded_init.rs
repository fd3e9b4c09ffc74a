//! Backend-independent initialization: weight matrices drawn on the host from a seeded stream.
//!
//! Burn's initializers draw from each backend's own RNG, so the same seed gives different
//! weights on ndarray, flex and wgpu. Drawing on the host instead makes a model built with
//! [`reinit_seeded`] identical on every backend, which cross-backend comparisons and
//! reproducible experiments need.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::error::{KvRoutingError, Result};

/// Redraws every parameter of rank >= 2 of `module` from `N(0, std²)` on the host, in the
/// module's visiting order. Rank-1 parameters (norm gains) keep their values.
pub fn reinit_seeded<B: Backend, M: Module<B>>(module: M, seed: u64, std: f64) -> Result<M> {
    let normal = Normal::new(0.0, std).map_err(|_| {
        KvRoutingError::InvalidConfig(format!(
            "initialization std must be finite and >= 0, got {std}"
        ))
    })?;
    Ok(module.map(&mut SeededNormal {
        rng: ChaCha8Rng::seed_from_u64(seed),
        normal,
    }))
}

struct SeededNormal {
    rng: ChaCha8Rng,
    normal: Normal<f64>,
}

impl<B: Backend> ModuleMapper<B> for SeededNormal {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if D < 2 {
            return param;
        }
        param.map(|tensor| {
            let shape = tensor.shape();
            let values: Vec<f64> = (0..shape.num_elements())
                .map(|_| self.normal.sample(&mut self.rng))
                .collect();
            let require_grad = tensor.is_require_grad();
            Tensor::from_data(TensorData::new(values, shape), &tensor.device())
                .set_require_grad(require_grad)
        })
    }
}
