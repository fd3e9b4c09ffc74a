//! [`KvDtype`]: what a KV cache stores per key/value, and [`KvRowFormat`], the bytes that
//! choice takes on a given backend.
//!
//! Two ways of saving KV memory multiply: depth (which layers keep a cache: the
//! [`Route`](crate::Route)) and precision (the bytes of each cached value: this). A cache in any
//! dtype serves every route; a model computes in its own float type whatever its cache stores.
//!
//! # Formats
//! - The float types store each value as it is (`Native`: the device's float type, no
//!   conversion; `Float(p)`: rounded to `p` when written, widened back when read).
//! - `Int8` is the symmetric block format of llama.cpp's `q8_0`
//!   ([`kv_quantization`](crate::kv_quantization)): each key or value row of one head of one
//!   token is cut into blocks of [`INT8_BLOCK`] values (one block per row when the head size is
//!   not a multiple of it), each stored as 8-bit codes `round(x / s)` in `-127..=127` and one
//!   scale `s = max|x| / 127` in the device's float type: 8.5 bits a value beside an f16 model,
//!   9 beside an f32 one.
//!
//! # Bytes, exactly
//! [`KvRowFormat`] is resolved per backend and device: a backend that cannot store 8-bit
//! integers (WebGPU's WGSL) keeps int8 codes in 32-bit integers, and its cache is then that
//! much larger, as [`KvCacheManager::bytes`](crate::KvCacheManager::bytes) reports and
//! [`KvCacheLayout::bytes_for`](crate::KvCacheLayout::bytes_for) computes: the formula and the
//! tensors held always agree.

use std::fmt;
use std::str::FromStr;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

use crate::error::{KvRoutingError, Result};
use crate::kernels::cast_float;
use crate::kv_quantization::int8_round_trip;
use crate::precision::Precision;

/// Values per block of the int8 format when the head size is a multiple of it (llama.cpp's
/// `q8_0` block).
pub const INT8_BLOCK: usize = 32;

/// What a KV cache stores per key/value. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    /// The device's float type, the one the model computes in (the default).
    #[default]
    Native,
    /// A float type of its own: values are rounded to it when written and widened to the
    /// model's type when read.
    Float(Precision),
    /// 8-bit codes with one scale per block (see the module docs).
    Int8,
}

impl KvDtype {
    /// `native`, `f32`, `f16`, `bf16` or `int8`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Float(precision) => precision.name(),
            Self::Int8 => "int8",
        }
    }

    /// How this dtype stores one head's key (or value) row of one token on `B`'s `device`, for
    /// heads of `head_dim` values.
    ///
    /// # Errors
    /// [`KvRoutingError::InvalidConfig`] when the backend cannot hold the float type asked for
    /// (bf16 on a WebGPU device without it, ...), or `head_dim` is 0.
    pub fn row_format<B: Backend>(
        self,
        device: &B::Device,
        head_dim: usize,
    ) -> Result<KvRowFormat> {
        if head_dim == 0 {
            return Err(KvRoutingError::InvalidConfig(
                "KV cache head_dim must be >= 1".into(),
            ));
        }
        let native = device_float_dtype::<B>(device);
        let format = match self {
            Self::Native => KvRowFormat::float(native, head_dim),
            Self::Float(precision) => {
                let dtype = precision_dtype(precision);
                if !B::supports_dtype(device, dtype) {
                    return Err(KvRoutingError::InvalidConfig(format!(
                        "this backend's device cannot store {precision} tensors: choose another KV dtype"
                    )));
                }
                KvRowFormat::float(dtype, head_dim)
            }
            Self::Int8 => {
                // WGSL has no 8-bit integers: such backends keep the codes in 32 bits.
                let codes = if B::supports_dtype(device, DType::I8) {
                    DType::I8
                } else {
                    DType::I32
                };
                let block = if head_dim.is_multiple_of(INT8_BLOCK) {
                    INT8_BLOCK
                } else {
                    head_dim
                };
                KvRowFormat {
                    head_dim,
                    element: codes,
                    scale: Some((native, block)),
                }
            }
        };
        Ok(format)
    }
}

impl FromStr for KvDtype {
    type Err = String;

    /// `native`, `int8`, or a float type in either naming (`f16`, `float16`, ...), in any case.
    fn from_str(name: &str) -> std::result::Result<Self, String> {
        match name.to_ascii_lowercase().as_str() {
            "native" => Ok(Self::Native),
            "int8" | "q8_0" => Ok(Self::Int8),
            other => other
                .parse()
                .map(Self::Float)
                .map_err(|_| format!("unknown KV dtype `{name}` (native, f32, f16, bf16 or int8)")),
        }
    }
}

impl fmt::Display for KvDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How one head's key (or value) row of one token is stored: a [`KvDtype`] resolved for a
/// backend and a head size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvRowFormat {
    /// Values per row (the head size).
    pub head_dim: usize,
    /// The stored element: a float type, or the integer type of the codes.
    pub element: DType,
    /// For a block-quantized row: the scales' float type and the values per scale.
    pub scale: Option<(DType, usize)>,
}

impl KvRowFormat {
    /// Rows of `head_dim` values of the float type `dtype`, stored as they are.
    pub fn float(dtype: DType, head_dim: usize) -> Self {
        Self {
            head_dim,
            element: dtype,
            scale: None,
        }
    }

    /// Blocks (scales) per row; 0 for a float row.
    pub fn blocks(&self) -> usize {
        self.scale.map_or(0, |(_, block)| self.head_dim / block)
    }

    /// `rows` (keys or values in the model's float type, `[batch, heads, len, head_dim]`) as a
    /// reader of a cache in this format sees them: stored and read back. A float row of the
    /// rows' own type is returned as it is.
    pub fn round_trip<B: Backend>(&self, rows: Tensor<B, 4>) -> Tensor<B, 4> {
        let dtype = rows.dtype();
        match self.scale {
            None if self.element == dtype => rows,
            None => cast_float(cast_float(rows, self.element), dtype),
            Some((_, block)) => int8_round_trip(rows, block, self.element),
        }
    }

    /// Bytes of one row: the elements, and the scales of a quantized row.
    pub fn bytes(&self) -> usize {
        let scales = self
            .scale
            .map_or(0, |(dtype, _)| self.blocks() * dtype.size());
        self.head_dim * self.element.size() + scales
    }
}

/// The float type tensors take by default on `device`.
pub(crate) fn device_float_dtype<B: Backend>(device: &B::Device) -> DType {
    DType::from(burn::tensor::get_device_settings::<B>(device).float_dtype)
}

fn precision_dtype(precision: Precision) -> DType {
    match precision {
        Precision::F32 => DType::F32,
        Precision::F16 => DType::F16,
        Precision::BF16 => DType::BF16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_round_trip() {
        for dtype in [
            KvDtype::Native,
            KvDtype::Float(Precision::F32),
            KvDtype::Float(Precision::F16),
            KvDtype::Float(Precision::BF16),
            KvDtype::Int8,
        ] {
            assert_eq!(dtype.name().parse(), Ok(dtype));
        }
        assert_eq!("Float16".parse(), Ok(KvDtype::Float(Precision::F16)));
        assert!("int4".parse::<KvDtype>().unwrap_err().contains("int4"));
    }

    #[test]
    fn row_bytes_count_codes_and_scales() {
        let int8 = KvRowFormat {
            head_dim: 64,
            element: DType::I8,
            scale: Some((DType::F16, 32)),
        };
        // q8_0: 34 bytes per 32 values.
        assert_eq!(int8.bytes(), 68);
        assert_eq!(int8.blocks(), 2);
        assert_eq!(KvRowFormat::float(DType::F32, 64).bytes(), 256);
        assert_eq!(KvRowFormat::float(DType::F32, 64).blocks(), 0);
    }
}
