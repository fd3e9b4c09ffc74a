//! Clipping of the *global* gradient norm, as `torch.nn.utils.clip_grad_norm_` does.
//!
//! Burn's `GradientClipping::Norm` clips each parameter tensor on its own, which changes the
//! direction of the update; clipping the norm over all parameters keeps it.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;

/// Scales every gradient by `min(1, max_norm / global_norm)`; returns the norm before clipping.
///
/// Everything stays on the device: the scale is a one-element tensor, applied to every gradient
/// (a multiply by 1 when the norm is within bounds), so that clipping never waits for the
/// device. The caller reads the norm back when it needs the number (the trainer reads it with
/// the loss, once per step).
///
/// # Shapes
/// - output: `[1]`
pub fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> Tensor<B::InnerBackend, 1> {
    let mut squares = SumOfSquares::<B> { grads, total: None };
    module.visit(&mut squares);
    let norm = squares.total.map(Tensor::sqrt).unwrap_or_else(|| {
        // No gradient at all (nothing trainable reached): a zero norm, on the module's device.
        let device = module.devices().into_iter().next().unwrap_or_default();
        Tensor::zeros([1], &device)
    });
    // max_norm / 0 is +inf, clamped to 1: a zero gradient stays zero.
    let scale = norm.clone().recip().mul_scalar(max_norm).clamp_max(1.0);
    module.visit(&mut Scale { grads, scale });
    norm
}

struct SumOfSquares<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    total: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SumOfSquares<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let square = grad.square().sum();
            self.total = Some(match self.total.take() {
                Some(total) => total + square,
                None => square,
            });
        }
    }
}

struct Scale<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    scale: Tensor<B::InnerBackend, 1>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let scale = self.scale.clone().reshape([1; D]);
            self.grads.register(param.id, grad.mul(scale));
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Module;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::GradientsParams;
    use burn::tensor::Tensor;
    use burn_autodiff::Autodiff;
    use burn_ndarray::NdArray;

    use super::clip_global_norm;

    type B = Autodiff<NdArray<f32>>;

    #[derive(Module, Debug)]
    struct Two<B: burn::tensor::backend::Backend> {
        a: Linear<B>,
        b: Linear<B>,
    }

    #[test]
    fn clips_the_norm_over_all_parameters() {
        let device = Default::default();
        let model: Two<B> = Two {
            a: LinearConfig::new(4, 3).init(&device),
            b: LinearConfig::new(4, 5).init(&device),
        };
        let x = Tensor::<B, 2>::ones([2, 4], &device) * 10.0;
        let loss = model.a.forward(x.clone()).sum() + model.b.forward(x).sum();
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        let before: f32 = clip_global_norm(&model, &mut grads, 1.0).into_scalar();
        assert!(before > 1.0);
        let after: f32 = clip_global_norm(&model, &mut grads, 1.0).into_scalar();
        assert!((after - 1.0).abs() < 1e-5, "norm after clipping: {after}");
    }
}
