//! A strided 4-D flex tensor copied to the contiguous layout a row at a time, over rayon's pool.
//!
//! burn-flex 0.21 makes a strided tensor contiguous element by element through a generic index
//! iterator (`FlexTensor::to_contiguous`, reached by `reshape`): merging the attention
//! context's heads after the swap `[batch, heads, seq, head_dim] → [batch, seq, heads,
//! head_dim]` took 6-7% of the samples of a 1,024-token Q8_0 prefill (docs/benchmarks.md).
//! Here each row of the last dimension is one slice copy.
//!
//! # Contract
//! [`contiguous`] returns a tensor equal to `x` in the contiguous layout when `x` is an f32,
//! f16 or bf16 flex tensor whose last dimension has unit stride (its extent checked against its
//! storage, as every strided operand here: [`Operand::new`]), and `None` otherwise: already
//! contiguous, another backend, element type or layout (the caller keeps Burn's path).

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Shape, Tensor};
use burn_flex::FlexTensor;
use half::{bf16, f16};
use rayon::prelude::*;

use super::strided::{Operand, Rows};
use super::tensor::{flex_float, from_flex, zeroed};
use super::vector::KernelElement;

/// Rows of the output a task copies at least (a few kilobytes: less is not worth a task).
const ROWS_PER_TASK: usize = 16;

/// See the module docs.
pub(crate) fn contiguous<B: Backend>(x: &Tensor<B, 4>) -> Option<Tensor<B, 4>> {
    let x = flex_float(x)?;
    if x.layout().contiguous_offsets().is_some() {
        return None;
    }
    let copy = match x.dtype() {
        DType::F32 => copied::<f32>(&x),
        DType::F16 => copied::<f16>(&x),
        DType::BF16 => copied::<bf16>(&x),
        _ => None,
    };
    from_flex(copy?)
}

fn copied<E: KernelElement>(x: &FlexTensor) -> Option<FlexTensor> {
    let operand = Operand::<E>::new(x)?;
    if operand.strides[3] != 1 {
        return None;
    }
    let [batch, heads, rows, width] = operand.shape;
    let mut out = zeroed(Shape::from(vec![batch, heads, rows, width]), E::DTYPE);
    E::storage_mut(&mut out)
        .par_chunks_mut(width)
        .with_min_len(ROWS_PER_TASK)
        .enumerate()
        .for_each(|(index, out)| {
            let (row, head, b) = (index % rows, index / rows % heads, index / (rows * heads));
            out.copy_from_slice(Rows::new(&operand, b, head, row, 1, width).row(0));
        });
    Some(out)
}

#[cfg(test)]
mod tests {
    use burn::tensor::{DType, Tensor, TensorData};
    use burn_flex::Flex;

    use super::contiguous;

    fn counting(shape: [usize; 4]) -> Tensor<Flex, 4> {
        let n = shape.iter().product::<usize>();
        let values: Vec<f32> = (0..n).map(|i| i as f32).collect();
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }

    /// Swapped heads (the attention's case), another swap and a narrowed view: the values of
    /// Burn's own copy, in f32, f16 and bf16.
    #[test]
    fn strided_views_copy_to_burns_values() {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let x = counting([2, 3, 5, 4]).cast(dtype);
            let views = [
                x.clone().swap_dims(1, 2),
                x.clone().swap_dims(0, 2),
                x.clone().slice([0..2, 1..3, 1..4, 0..4]),
            ];
            for view in views {
                let copy = contiguous(&view).expect("a strided flex view with unit-stride rows");
                assert_eq!(copy.dims(), view.dims());
                assert_eq!(copy.dtype(), dtype);
                copy.into_data().assert_eq(&view.into_data(), true);
            }
        }
    }

    /// Contiguous tensors, rows with a stride and other backends are left to Burn.
    #[test]
    fn declines_what_it_need_not_or_cannot_copy() {
        let x = counting([1, 2, 3, 4]);
        assert!(contiguous(&x).is_none());
        assert!(contiguous(&x.clone().swap_dims(2, 3)).is_none());
        let device = Default::default();
        let other = Tensor::<burn_autodiff::Autodiff<Flex>, 4>::zeros([1, 2, 3, 4], &device);
        assert!(contiguous(&other.swap_dims(1, 2)).is_none());
    }
}
