//! The flex tensor behind a generic `Tensor<B, D>` and back (feature `flex`), for the CPU
//! kernels (`crate::flex_*`).
//!
//! Generic code cannot name `B`'s tensor type, but it can ask whether it *is* flex's: the
//! primitive goes through `Any` and is downcast, which succeeds exactly when `B` is
//! `burn_flex::Flex` (not `Autodiff<Flex>`, whose primitive is another type). No copy is made:
//! flex tensors share their buffer (`Arc`).

use std::any::Any;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_flex::FlexTensor;

/// The flex tensor behind `tensor` when `B` is flex and the tensor holds f32, f16 or bf16, the
/// types the kernels read ([`crate::flex_vector::Element`]).
pub(crate) fn flex_float<B: Backend, const D: usize>(tensor: &Tensor<B, D>) -> Option<FlexTensor> {
    let mut primitive = Some(tensor.clone().into_primitive().tensor());
    let flex = (&mut primitive as &mut dyn Any)
        .downcast_mut::<Option<FlexTensor>>()?
        .take()?;
    matches!(flex.dtype(), DType::F32 | DType::F16 | DType::BF16).then_some(flex)
}

/// The values of a flex tensor of any float type, widened to f32, in logical order (the kernels'
/// tests compare them with f64 references).
#[cfg(test)]
pub(crate) fn f32_values<const D: usize>(tensor: &Tensor<burn_flex::Flex, D>) -> Vec<f32> {
    tensor
        .clone()
        .cast(DType::F32)
        .to_data()
        .to_vec::<f32>()
        .unwrap()
}

/// `tensor` as a `Tensor<B, D>`, when `B` is flex and the ranks agree.
pub(crate) fn from_flex<B: Backend, const D: usize>(tensor: FlexTensor) -> Option<Tensor<B, D>> {
    if tensor.layout().num_dims() != D {
        return None;
    }
    let mut primitive = Some(tensor);
    let primitive = (&mut primitive as &mut dyn Any)
        .downcast_mut::<Option<B::FloatTensorPrimitive>>()?
        .take()?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(primitive)))
}
