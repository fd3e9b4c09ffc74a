//! [`rms_norm`]: `burn::nn::RmsNorm` applied through a backend's own kernel where there is one.

use burn::nn::RmsNorm;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `norm.forward(x)`, computed by the backend's own kernel where there is one
/// ([`crate::kernels`]; on flex one pass per row instead of eight tensor ops) and by
/// `RmsNorm::forward` elsewhere.
///
/// # Shapes
/// - x: `[..., d_model]`
/// - output: `[..., d_model]`
pub(crate) fn rms_norm<B: Backend, const D: usize>(
    norm: &RmsNorm<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    if let Some(y) = crate::kernels::rms_norm(&x, &norm.gamma.val(), norm.epsilon) {
        return y;
    }
    norm.forward(x)
}
