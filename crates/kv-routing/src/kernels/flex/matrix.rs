//! Strided f32 matrices, bounds-checked once, and their product by gemm into a fresh buffer.
//!
//! flex 0.21's matmul allocates each result through `FlexTensor::empty`, which zeroes a byte
//! vector and copies it into an aligned one: two passes over fresh pages that gemm then
//! overwrites. [`product`] lets gemm write into a new, unzeroed buffer, reading either operand
//! through its strides (a transposed view costs no copy). Used by the projections' training
//! product ([`super::training_linear`]) and the half-precision products
//! ([`super::half_product`]).

use burn::tensor::{DType, Shape};
use burn_flex::FlexTensor;

use super::tensor::f32_tensor;

/// Below this many multiply-adds a product runs on the calling thread (burn-flex's own
/// threshold for its matmul).
const PARALLEL_MULTIPLY_ADDS: usize = 192 * 192 * 192;

/// A strided f32 matrix whose whole extent lies inside its storage (checked once, as
/// [`super::strided::Operand`] does for the attention's operands).
#[derive(Clone, Copy)]
pub(crate) struct Matrix<'a> {
    data: &'a [f32],
    start: usize,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Matrix<'a> {
    /// The matrix behind a 2-D f32 tensor with non-negative strides, no empty dimension and
    /// its last element inside its storage; `None` otherwise.
    pub(crate) fn new(tensor: &'a FlexTensor) -> Option<Self> {
        let layout = tensor.layout();
        let (shape, strides) = (layout.shape(), layout.strides());
        if tensor.dtype() != DType::F32 || shape.num_dims() != 2 || strides.len() != 2 {
            return None;
        }
        let (rows, cols) = (shape[0], shape[1]);
        let row_stride = usize::try_from(strides[0]).ok()?;
        let col_stride = usize::try_from(strides[1]).ok()?;
        if rows == 0 || cols == 0 {
            return None;
        }
        let data = tensor.storage::<f32>();
        let start = layout.start_offset();
        let last = start
            .checked_add((rows - 1).checked_mul(row_stride)?)?
            .checked_add((cols - 1).checked_mul(col_stride)?)?;
        (last < data.len()).then_some(Self {
            data,
            start,
            rows,
            cols,
            row_stride,
            col_stride,
        })
    }

    /// `values` read as a contiguous `[rows, cols]` matrix (`rows * cols` of them, both
    /// positive).
    pub(crate) fn contiguous(values: &'a [f32], rows: usize, cols: usize) -> Self {
        assert!(rows > 0 && cols > 0 && rows * cols == values.len());
        Self {
            data: values,
            start: 0,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The first `count` rows (at most all of them) of the same values.
    pub(crate) fn first_rows(&self, count: usize) -> Self {
        Self {
            rows: count.clamp(1, self.rows),
            ..*self
        }
    }

    /// The same values read as the transposed matrix (no copy).
    pub(crate) fn transposed(&self) -> Self {
        Self {
            data: self.data,
            start: self.start,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }
}

/// `lhs rhs` written into `dst`, row `i` of the product at `dst[i * dst_row_stride..]` (the
/// columns of a wider matrix): gemm writes every one of those `lhs.rows x rhs.cols` elements
/// and nothing else.
pub(crate) fn product_into(lhs: &Matrix, rhs: &Matrix, dst: &mut [f32], dst_row_stride: usize) {
    let (m, n) = (lhs.rows, rhs.cols);
    assert!(lhs.cols == rhs.rows && n <= dst_row_stride);
    assert!((m - 1) * dst_row_stride + n <= dst.len());
    // SAFETY: the destination's extent was checked against `dst` above.
    unsafe { gemm_into(lhs, rhs, lhs.cols, dst.as_mut_ptr(), dst_row_stride) }
}

/// `lhs rhs` over the first `inner` terms of the inner dimension (all of them but under a
/// mutation), as a new contiguous `[lhs.rows, rhs.cols]` tensor.
///
/// The result's buffer is neither zeroed nor copied: gemm writes every element of it (it does
/// not read the destination, and with an empty inner dimension it writes zeros).
pub(crate) fn product(lhs: &Matrix, rhs: &Matrix, inner: usize) -> FlexTensor {
    debug_assert!(inner <= lhs.cols && lhs.cols == rhs.rows);
    let (m, n) = (lhs.rows, rhs.cols);
    let mut values: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: the destination is the vector's `m x n` spare capacity, written with unit column
    // stride, every element of it (see above) before `set_len`.
    unsafe {
        gemm_into(lhs, rhs, inner, values.as_mut_ptr(), n);
        values.set_len(m * n);
    }
    f32_tensor(values, Shape::from(vec![m, n]))
}

/// gemm's `dst = lhs rhs` over the first `inner` terms, row `i` of the product at
/// `dst + i * dst_row_stride`, on the pool when the product is large enough.
///
/// # Safety
/// `dst` is valid for writes of `(lhs.rows - 1) * dst_row_stride + rhs.cols` values, and
/// `inner` does not exceed `lhs.cols == rhs.rows`. Both operands' extents were checked against
/// their storage (`Matrix::new`, `Matrix::contiguous`; a transposed view covers the same
/// elements); gemm does not read the destination.
unsafe fn gemm_into(
    lhs: &Matrix,
    rhs: &Matrix,
    inner: usize,
    dst: *mut f32,
    dst_row_stride: usize,
) {
    let (m, n) = (lhs.rows, rhs.cols);
    let parallelism = if m.saturating_mul(n).saturating_mul(inner) >= PARALLEL_MULTIPLY_ADDS {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: this function's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            inner,
            dst,
            1,
            dst_row_stride as isize,
            false,
            lhs.data.as_ptr().add(lhs.start),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr().add(rhs.start),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
