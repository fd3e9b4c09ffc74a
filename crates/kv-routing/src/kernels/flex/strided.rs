//! Strided 4-D operands of the attention kernel, bounds-checked once.
//!
//! A flex tensor's layout (start offset, shape, strides) is data the kernel trusts for pointer
//! arithmetic: gemm reads through raw pointers. burn-flex's public API lets safe code build a
//! layout that points outside its buffer, so an [`Operand`] is only made after checking that
//! the *whole extent* of the layout, the last element included, lies inside the storage (checked
//! arithmetic, O(rank)). Every row range taken from it afterwards ([`Rows`], [`Operand::row_f32`])
//! stays inside that extent.

use burn_flex::FlexTensor;

use super::vector::{KernelElement, StoredElement};

/// A strided 4-D operand: its storage, the offset of element 0, its shape and its strides.
pub(crate) struct Operand<'a, E> {
    data: &'a [E],
    start: usize,
    pub(crate) shape: [usize; 4],
    pub(crate) strides: [usize; 4],
}

impl<'a, E: StoredElement> Operand<'a, E> {
    /// The operand behind `tensor`, when it is 4-D with non-negative strides and its whole
    /// extent lies inside its storage; `None` otherwise (the caller leaves the work to Burn).
    pub(crate) fn new(tensor: &'a FlexTensor) -> Option<Self> {
        let layout = tensor.layout();
        let (dims, raw_strides) = (layout.shape(), layout.strides());
        if dims.num_dims() != 4 || raw_strides.len() != 4 || tensor.dtype() != E::DTYPE {
            return None;
        }
        let mut shape = [0; 4];
        let mut strides = [0; 4];
        for axis in 0..4 {
            shape[axis] = dims[axis];
            strides[axis] = usize::try_from(raw_strides[axis]).ok()?;
        }
        let data = E::storage(tensor);
        let start = layout.start_offset();
        if shape.contains(&0) {
            return None;
        }
        // The last element's index: start + Σ (size - 1) * stride, every step checked.
        let mut last = start;
        for axis in 0..4 {
            last = last.checked_add((shape[axis] - 1).checked_mul(strides[axis])?)?;
        }
        (last < data.len()).then_some(Self {
            data,
            start,
            shape,
            strides,
        })
    }

    /// Index in the storage of element `[batch, head, row, 0]`; inside the storage for any
    /// index inside the shape (checked at construction).
    pub(crate) fn offset(&self, batch: usize, head: usize, row: usize) -> usize {
        debug_assert!(batch < self.shape[0] && head < self.shape[1] && row < self.shape[2]);
        let [sb, sh, sr, _] = self.strides;
        self.start + batch * sb + head * sh + row * sr
    }

    /// Element `[batch, head, row, column]`.
    pub(crate) fn value(&self, batch: usize, head: usize, row: usize, column: usize) -> E {
        debug_assert!(column < self.shape[3]);
        self.data[self.offset(batch, head, row) + column * self.strides[3]]
    }

    /// The same operand with its strides replaced, when the new view stays inside the extent
    /// already checked: each new `(size, stride)` pair spans at most what `self` spans.
    pub(crate) fn restrided(&self, shape: [usize; 4], strides: [usize; 4]) -> Option<Self> {
        let span = |shape: &[usize; 4], strides: &[usize; 4]| -> Option<usize> {
            (0..4).try_fold(0usize, |sum, axis| {
                sum.checked_add((shape[axis] - 1).checked_mul(strides[axis])?)
            })
        };
        if shape.contains(&0) || span(&shape, &strides)? > span(&self.shape, &self.strides)? {
            return None;
        }
        Some(Self {
            data: self.data,
            start: self.start,
            shape,
            strides,
        })
    }
}

impl<E: KernelElement> Operand<'_, E> {
    /// Pointer to element `[batch, head, row, 0]` of an f32 operand (gemm's), `None` for other
    /// element types.
    pub(crate) fn row_f32(&self, batch: usize, head: usize, row: usize) -> Option<*const f32> {
        let data = E::as_f32(self.data)?;
        Some(data[self.offset(batch, head, row)..].as_ptr())
    }
}

/// `count` rows of `width` contiguous values, one stride apart, in an operand's storage.
pub(crate) struct Rows<'a, E> {
    data: &'a [E],
    stride: usize,
    pub(crate) count: usize,
    pub(crate) width: usize,
}

impl<'a, E: StoredElement> Rows<'a, E> {
    /// Rows `first..first + count` of `[batch, head]`, `width` values each from column 0. The
    /// slice is bounds-checked by indexing (a panic, never an out-of-bounds read, if a caller
    /// asked for rows outside the operand).
    pub(crate) fn new(
        operand: &Operand<'a, E>,
        batch: usize,
        head: usize,
        first: usize,
        count: usize,
        width: usize,
    ) -> Self {
        let stride = operand.strides[2];
        let start = operand.offset(batch, head, first);
        let end = start + (count - 1) * stride + width;
        Self {
            data: &operand.data[start..end],
            stride,
            count,
            width,
        }
    }

    pub(crate) fn row(&self, index: usize) -> &'a [E] {
        &self.data[index * self.stride..][..self.width]
    }

    /// Every row as one slice, when the rows follow each other without gaps.
    pub(crate) fn as_contiguous(&self) -> Option<&'a [E]> {
        (self.stride == self.width).then(|| &self.data[..self.count * self.width])
    }
}
