//! [`AdapterUpRate`]: the sharing adapters' `up` matrices stepped at a multiple of the run's
//! learning rate (LoRA+, Hayou et al. 2024, arXiv 2402.12354).
//!
//! A sharing adapter's delta is `x · down · up` with `up` starting at zero
//! ([`kv_routing::sharing_adapter`]). LoRA+ observes that for wide layers one rate for both
//! matrices is inefficient: `up`, which starts at zero and maps the small rank back to the wide
//! output, should learn faster, by a ratio of about 2⁴ in their experiments. Burn's AdamW takes
//! one rate per step, so the step is split: the gradients of the `up` matrices are stepped on
//! their own at `ratio x lr` by the same optimizer (AdamW's state is per parameter, so the two
//! calls update disjoint states), everything else at `lr`. Clipping happens before the split,
//! over all gradients together.
//!
//! # Contract
//! With a ratio of 1 the step is exactly one AdamW step over all gradients. An `up` matrix with
//! no gradient this step (a layer's key and value adapters when the route has it read another
//! layer's keys and values) is left alone, as one AdamW step leaves it.

use burn::module::{AutodiffModule, ParamId};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use kv_routing::RoutedTransformer;

use crate::error::{Result, TrainError};

/// The largest ratio a run accepts: LoRA+ reports 2⁴ as best for most models and a larger one
/// as unstable; a value beyond 2⁸ is taken for a typo rather than trained with.
pub const MAX_ADAPTER_UP_RATIO: f64 = 256.0;

/// The `up` matrices of a model's sharing adapters and the multiple of the rate they learn at.
#[derive(Clone, Debug)]
pub struct AdapterUpRate {
    ratio: f64,
    ids: Vec<ParamId>,
}

impl AdapterUpRate {
    /// The `up` matrices of `model`'s adapters, stepped at `ratio x lr`. A model without
    /// adapters, or a ratio outside `(0, MAX_ADAPTER_UP_RATIO]`, is an error.
    pub fn new<B: AutodiffBackend>(ratio: f64, model: &RoutedTransformer<B>) -> Result<Self> {
        check_ratio(ratio)?;
        let ids = model.sharing_adapter_up_ids();
        if ids.is_empty() {
            return Err(without_adapters());
        }
        Ok(Self { ratio, ids })
    }

    /// One step of `optimizer` on `module`: the `up` matrices' gradients at `ratio x lr`, the
    /// rest at `lr`.
    pub fn step<B, M, O>(
        &self,
        optimizer: &mut O,
        lr: f64,
        module: M,
        mut grads: GradientsParams,
    ) -> M
    where
        B: AutodiffBackend,
        M: AutodiffModule<B>,
        O: Optimizer<M, B>,
    {
        let mut up = GradientsParams::new();
        for &id in &self.ids {
            if let Some(grad) = grads.remove::<B::InnerBackend, 2>(id) {
                up.register(id, grad);
            }
        }
        let module = optimizer.step(lr, module, grads);
        if up.is_empty() {
            return module;
        }
        optimizer.step(lr * self.ratio, module, up)
    }
}

/// The error for a ratio given to a model (or configuration) without sharing adapters.
pub(crate) fn without_adapters() -> TrainError {
    TrainError::Config(
        "adapter_up_lr_ratio sets the rate of the sharing adapters' up matrices; the model has no sharing adapters".into(),
    )
}

/// Checks a ratio on its own (a configuration's, before any model exists).
pub fn check_ratio(ratio: f64) -> Result<()> {
    if ratio > 0.0 && ratio <= MAX_ADAPTER_UP_RATIO {
        Ok(())
    } else {
        Err(TrainError::Config(format!(
            "adapter_up_lr_ratio must be in (0, {MAX_ADAPTER_UP_RATIO}], got {ratio}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::optim::{AdamWConfig, SgdConfig};
    use burn::tensor::Tensor;
    use burn_autodiff::Autodiff;
    use burn_flex::{Flex, FlexDevice};
    use kv_routing::{Route, SharingAdapterConfig};

    use crate::loss::mean_loss;
    use crate::train_config::TrainConfig;

    type B = Autodiff<Flex>;

    /// Two layers with rank-4 adapters, only they trainable.
    fn model() -> RoutedTransformer<B> {
        let mut config = TrainConfig::small(2, 32, 8).model;
        config.sharing_adapter = Some(SharingAdapterConfig::new(4));
        config
            .init_seeded::<B>(0, &FlexDevice)
            .unwrap()
            .with_only_sharing_adapters_trainable()
            .unwrap()
    }

    /// The gradients of a next-token loss under a route where layer 1 reads layer 0.
    fn gradients(model: &RoutedTransformer<B>) -> GradientsParams {
        let tokens = [[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]];
        let inputs: Vec<Vec<u32>> = tokens.iter().map(|t| t[..7].to_vec()).collect();
        let targets: Vec<Vec<u32>> = tokens.iter().map(|t| t[1..].to_vec()).collect();
        let route = Route::new(vec![0, 0]).unwrap();
        let loss = mean_loss(model.forward_tokens(&inputs, &route).unwrap(), &targets).unwrap();
        GradientsParams::from_grads(loss.backward(), model)
    }

    /// Every trainable matrix as `(is an up matrix, values, gradient in grads)`.
    fn adapters(
        model: &RoutedTransformer<B>,
        grads: &GradientsParams,
    ) -> Vec<(bool, Vec<f32>, Vec<f32>)> {
        let values = |t: Tensor<Flex, 2>| t.into_data().convert::<f32>().to_vec::<f32>().unwrap();
        let matrix = |up: bool, param: &burn::module::Param<Tensor<B, 2>>| {
            let gradient = grads.get::<Flex, 2>(param.id).map_or_else(Vec::new, values);
            (up, values(param.val().inner()), gradient)
        };
        model
            .blocks
            .iter()
            .flat_map(|block| block.projections())
            .flat_map(|projection| {
                let delta = projection.sharing.as_ref().unwrap();
                [matrix(false, &delta.down), matrix(true, &delta.up)]
            })
            .collect()
    }

    #[test]
    fn up_matrices_take_ratio_times_the_step_of_the_rest() {
        let (ratio, lr) = (8.0, 0.01);
        let mut sgd = SgdConfig::new().init::<B, RoutedTransformer<B>>();
        // One plain step first: `up` starts at zero, which makes `down`'s gradient zero.
        let start = model();
        let start = sgd.step(lr, start.clone(), gradients(&start));
        let grads = gradients(&start);
        let before = adapters(&start, &grads);
        let stepped = AdapterUpRate::new(ratio, &start)
            .unwrap()
            .step(&mut sgd, lr, start, grads);
        let after = adapters(&stepped, &GradientsParams::new());
        let mut moved = [false; 2];
        for ((up, old, gradient), (_, new, _)) in before.iter().zip(&after) {
            // SGD's step is exactly `w - rate g`: the split must give `up` the ratio's rate.
            let rate = if *up { ratio * lr } else { lr } as f32;
            if gradient.is_empty() {
                // Layer 1's key and value: the route reads layer 0's instead.
                assert_eq!(old, new, "a matrix without a gradient moved");
                continue;
            }
            for ((w, g), stepped) in old.iter().zip(gradient).zip(new) {
                let expected = w - rate * g;
                assert!(
                    (stepped - expected).abs() <= 1e-6 * (1.0 + expected.abs()),
                    "{} matrix: {stepped} where SGD at {rate} gives {expected}",
                    if *up { "up" } else { "down" }
                );
                moved[usize::from(*up)] |= *g != 0.0;
            }
        }
        assert_eq!(
            moved,
            [true, true],
            "the check needs gradients on both kinds"
        );
    }

    #[test]
    fn a_ratio_of_one_is_one_adamw_step() {
        let start = model();
        let mut plain = AdamWConfig::new().init::<B, RoutedTransformer<B>>();
        let mut split = AdamWConfig::new().init::<B, RoutedTransformer<B>>();
        let up_rate = AdapterUpRate::new(1.0, &start).unwrap();
        let (mut a, mut b) = (start.clone(), start);
        for _ in 0..2 {
            a = plain.step(1e-2, a.clone(), gradients(&a));
            b = up_rate.step(&mut split, 1e-2, b.clone(), gradients(&b));
        }
        let none = GradientsParams::new();
        assert_eq!(adapters(&a, &none), adapters(&b, &none));
    }

    #[test]
    fn refuses_ratios_out_of_range_and_models_without_adapters() {
        let model = model();
        for ratio in [0.0, -1.0, f64::NAN, f64::INFINITY, 257.0] {
            assert!(AdapterUpRate::new(ratio, &model).is_err(), "{ratio}");
        }
        let bare = TrainConfig::small(2, 32, 8)
            .model
            .init_seeded::<B>(0, &FlexDevice)
            .unwrap();
        let error = AdapterUpRate::new(16.0, &bare).unwrap_err().to_string();
        assert!(error.contains("no sharing adapters"), "{error}");
        let mut config = TrainConfig::small(2, 32, 8);
        config.adapter_up_lr_ratio = Some(16.0);
        assert!(config.validate().is_err());
        config.model.sharing_adapter = Some(SharingAdapterConfig::new(4));
        config.validate().unwrap();
        config.adapter_up_lr_ratio = Some(0.0);
        assert!(config.validate().is_err());
    }
}
