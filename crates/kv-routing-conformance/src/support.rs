//! Helpers shared by the conformance tests: tolerances, comparisons, small models.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use kv_routing::{RoutedTransformer, RoutedTransformerConfig};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Allowed difference between a backend result and the f64 oracle: `|a - e| <= abs + rel * |e|`.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    /// Absolute part.
    pub abs: f64,
    /// Relative part.
    pub rel: f64,
}

/// The tolerance for the backend's default float type (see `docs/backends.md`).
///
/// - f64: 1e-9 + 1e-9·|e| — only summation order differs from the oracle.
/// - f32: 5e-5 + 5e-5·|e| — about 20x the worst error seen on ndarray and flex (2.3e-6).
/// - f16/bf16: 5e-2 + 5e-2·|e| — 10 or 7 mantissa bits.
pub fn tolerance<B: Backend>(device: &B::Device) -> Tolerance {
    match Tensor::<B, 1>::zeros([1], device).dtype() {
        DType::F64 => Tolerance {
            abs: 1e-9,
            rel: 1e-9,
        },
        DType::F16 | DType::BF16 => Tolerance {
            abs: 5e-2,
            rel: 5e-2,
        },
        _ => Tolerance {
            abs: 5e-5,
            rel: 5e-5,
        },
    }
}

/// Panics with the worst element when `actual` and `expected` differ beyond `tolerance`.
pub fn assert_close(actual: &[f64], expected: &[f64], tolerance: Tolerance, context: &str) {
    assert_eq!(actual.len(), expected.len(), "{context}: length differs");
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let excess = (a - e).abs() - (tolerance.abs + tolerance.rel * e.abs());
        if (excess > 0.0 || excess.is_nan()) && worst.is_none_or(|(_, w)| excess > w) {
            worst = Some((i, excess));
        }
    }
    if let Some((i, _)) = worst {
        panic!(
            "{context}: element {i} is {} but expected {} (|diff| = {:.3e}, tolerance {:?})",
            actual[i],
            expected[i],
            (actual[i] - expected[i]).abs(),
            tolerance
        );
    }
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// `[batch, seq, vocab]` logits to host, `[batch][seq][vocab]`.
pub fn logits_to_host<B: Backend>(logits: Tensor<B, 3>) -> Vec<Vec<Vec<f64>>> {
    let [batch, seq, vocab] = logits.dims();
    let values: Vec<f64> = logits.into_data().iter::<f64>().collect();
    (0..batch)
        .map(|b| {
            (0..seq)
                .map(|s| values[(b * seq + s) * vocab..(b * seq + s + 1) * vocab].to_vec())
                .collect()
        })
        .collect()
}

/// Any tensor to host values.
pub fn to_host<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f64> {
    tensor.into_data().iter::<f64>().collect()
}

/// The small model every test uses unless it needs another shape: 6 layers, 4 query heads of
/// size 8, weights large enough (std 0.2) that attention is sharp and routing errors show.
pub fn tiny_config(n_kv_heads: usize) -> RoutedTransformerConfig {
    RoutedTransformerConfig::new(37, 32, 6, 4, 48)
        .with_n_kv_heads(Some(n_kv_heads))
        .with_max_seq_len(64)
        .with_init_std(0.2)
}

/// A model from `config` with host-seeded weights (identical on every backend).
pub fn tiny_model<B: Backend>(
    config: &RoutedTransformerConfig,
    device: &B::Device,
) -> RoutedTransformer<B> {
    config
        .init_seeded(42, device)
        .expect("test configs are valid")
}

/// `len` pseudo-random tokens below `vocab`.
pub fn random_tokens(seed: u64, len: usize, vocab: usize) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len)
        .map(|_| rng.random_range(0..vocab as u32))
        .collect()
}

/// Redraws every rank-1 parameter (biases, norm gains) of `module` uniformly from `[0.5, 1.5)`
/// on the host: initialization leaves them at 0 or 1, where a mapping or formula error in them
/// would not show.
pub fn randomize_vectors<B: Backend, M: Module<B>>(module: M, seed: u64) -> M {
    struct Vectors(ChaCha8Rng);
    impl<B: Backend> ModuleMapper<B> for Vectors {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            if D != 1 {
                return param;
            }
            param.map(|tensor| {
                let shape = tensor.shape();
                let values: Vec<f64> = (0..shape.num_elements())
                    .map(|_| self.0.random_range(0.5..1.5))
                    .collect();
                Tensor::from_data(TensorData::new(values, shape), &tensor.device())
            })
        }
    }
    module.map(&mut Vectors(ChaCha8Rng::seed_from_u64(seed)))
}
