//! [`BlockWeight`]: a weight matrix kept in llama.cpp's block-quantized formats, as a GGUF file
//! stores it, instead of being widened to floats at load.
//!
//! # Formats
//! A matrix of `d_output` rows (one per output feature) of `d_input` values is cut along each row
//! into blocks of [`BLOCK_VALUES`] values; a row is its blocks, one after the other, and the
//! matrix is its rows, one after the other (GGUF's byte order, so a file's tensor is used as it
//! lies):
//! - [`BlockFormat::Q8_0`] (34 bytes a block, 8.5 bits a value): an f16 scale `d`, then 32 signed
//!   8-bit codes `q`; value `i` is `d q[i]`.
//! - [`BlockFormat::Q4_1`] (20 bytes a block, 5 bits a value): an f16 scale `d`, an f16 offset
//!   `m`, then 16 bytes of 4-bit codes: byte `j` holds value `j` in its low nibble and value
//!   `j + 16` in its high one; value `i` is `d q[i] + m`.
//!
//! # Invariants
//! `d_input` is a positive multiple of [`BLOCK_VALUES`], `d_output` is positive, and the bytes
//! are exactly `d_output * d_input / 32 * block_bytes`: [`BlockWeight::new`] refuses anything
//! else. Every scale is finite (a file with NaN or infinite scales is refused too), so the
//! dequantized matrix is finite.
//!
//! The bytes live in host memory behind an `Arc`: cloning a model shares them. Where they are
//! multiplied in place (burn-flex, see [`crate::kernels`]) they are all the memory the matrix
//! takes; elsewhere a [`crate::Projection`] widens them into its float weight at first use.

use std::fmt;
use std::sync::Arc;

use burn::tensor::backend::Backend;
use half::f16;

use crate::error::{KvRoutingError, Result};

/// Values per block in every format.
pub const BLOCK_VALUES: usize = 32;

/// A block-quantized format of llama.cpp (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum BlockFormat {
    /// 8-bit codes with one f16 scale per block.
    Q8_0,
    /// 4-bit codes with an f16 scale and an f16 offset per block.
    Q4_1,
}

impl BlockFormat {
    /// Bytes of one block of [`BLOCK_VALUES`] values.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::Q8_0 => 2 + BLOCK_VALUES,
            Self::Q4_1 => 4 + BLOCK_VALUES / 2,
        }
    }

    /// llama.cpp's name: `q8_0`, `q4_1`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Q8_0 => "q8_0",
            Self::Q4_1 => "q4_1",
        }
    }

    /// The worst error of [`quantize`](BlockWeight::quantize) on a block, relative to the block's
    /// range: half a code step (the rounding) plus the f16 rounding of the scale and offset
    /// (relative 2⁻¹¹ each), times the largest code.
    pub fn error_bound(self, block: &[f32]) -> f64 {
        let max = block.iter().fold(0f64, |a, &x| a.max(x as f64));
        let min = block.iter().fold(0f64, |a, &x| a.min(x as f64));
        let unit = 2f64.powi(-11);
        match self {
            Self::Q8_0 => {
                let step = max.max(-min) / 127.0;
                step * (0.5 + 127.0 * unit) + 1e-30
            }
            Self::Q4_1 => {
                let step = (max - min) / 15.0;
                step * (0.5 + 15.0 * unit) + min.abs() * unit + 1e-30
            }
        }
    }
}

impl fmt::Display for BlockFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for BlockFormat {
    type Err = String;

    fn from_str(name: &str) -> std::result::Result<Self, String> {
        match name.to_ascii_lowercase().as_str() {
            "q8_0" => Ok(Self::Q8_0),
            "q4_1" => Ok(Self::Q4_1),
            _ => Err(format!("unknown block format `{name}` (q8_0 or q4_1)")),
        }
    }
}

/// A `[d_output, d_input]` matrix in a [`BlockFormat`]. See the module docs.
#[derive(Clone)]
pub struct BlockWeight {
    format: BlockFormat,
    d_output: usize,
    d_input: usize,
    bytes: Arc<[u8]>,
    /// Whether a prompt's products round their rows to 8 bits (see
    /// [`BlockWeight::with_int8_prompt_products`]).
    int8_prompt_products: bool,
}

impl fmt::Debug for BlockWeight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "BlockWeight({} [{}, {}], {} bytes)",
            self.format,
            self.d_output,
            self.d_input,
            self.bytes.len()
        )
    }
}

impl BlockWeight {
    /// The matrix of `d_output` rows of `d_input` values whose blocks are `bytes` (GGUF's
    /// layout). An error when the sizes disagree or a scale is not finite.
    pub fn new(
        format: BlockFormat,
        [d_output, d_input]: [usize; 2],
        bytes: impl Into<Arc<[u8]>>,
    ) -> Result<Self> {
        let bytes = bytes.into();
        if d_output == 0 || d_input == 0 || !d_input.is_multiple_of(BLOCK_VALUES) {
            return Err(KvRoutingError::InvalidConfig(format!(
                "a {format} matrix needs rows of a positive multiple of {BLOCK_VALUES} values and at least one row, got [{d_output}, {d_input}]"
            )));
        }
        let expected = (d_input / BLOCK_VALUES)
            .checked_mul(d_output)
            .and_then(|blocks| blocks.checked_mul(format.block_bytes()));
        if expected != Some(bytes.len()) {
            return Err(KvRoutingError::InvalidConfig(format!(
                "a {format} matrix of [{d_output}, {d_input}] takes {} bytes, got {}",
                expected.map_or_else(|| "more than usize::MAX".into(), |n| n.to_string()),
                bytes.len()
            )));
        }
        let weight = Self {
            format,
            d_output,
            d_input,
            bytes,
            int8_prompt_products: false,
        };
        if let Some(block) = weight
            .blocks()
            .position(|block| !block_params(format, block).iter().all(|p| p.is_finite()))
        {
            return Err(KvRoutingError::InvalidConfig(format!(
                "block {block} of a {format} matrix has a scale or offset that is not finite"
            )));
        }
        Ok(weight)
    }

    /// `values` (`[d_output, d_input]`, row-major) quantized to `format`: per block, Q8_0's scale
    /// is `max|x| / 127` and its codes `round(x / d)`; Q4_1's offset is the block's minimum, its
    /// scale `(max - min) / 15` and its codes `round((x - m) / d)`, both as llama.cpp's reference
    /// quantizers (scales rounded to f16 after the codes are chosen). Each value is then within
    /// [`BlockFormat::error_bound`] of its block.
    pub fn quantize(
        format: BlockFormat,
        [d_output, d_input]: [usize; 2],
        values: &[f32],
    ) -> Result<Self> {
        if d_output.checked_mul(d_input) != Some(values.len()) {
            return Err(KvRoutingError::ShapeMismatch {
                context: "BlockWeight::quantize".into(),
                expected: vec![d_output, d_input],
                actual: vec![values.len()],
            });
        }
        if !d_input.is_multiple_of(BLOCK_VALUES) || d_input == 0 || d_output == 0 {
            return Err(KvRoutingError::InvalidConfig(format!(
                "a {format} matrix needs rows of a positive multiple of {BLOCK_VALUES} values and at least one row, got [{d_output}, {d_input}]"
            )));
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(KvRoutingError::InvalidConfig(format!(
                "value {i} of a matrix to quantize is not finite"
            )));
        }
        let mut bytes = Vec::with_capacity(values.len() / BLOCK_VALUES * format.block_bytes());
        for block in values.chunks_exact(BLOCK_VALUES) {
            match format {
                BlockFormat::Q8_0 => quantize_q8_0(block, &mut bytes),
                BlockFormat::Q4_1 => quantize_q4_1(block, &mut bytes),
            }
        }
        Self::new(format, [d_output, d_input], bytes)
    }

    /// The format.
    pub fn format(&self) -> BlockFormat {
        self.format
    }

    /// This matrix with llama.cpp's arithmetic for a prompt's products switched on or off (off
    /// by default). On: where flex multiplies the blocks on a CPU with AVX2 or AVX-512 VNNI, a
    /// product of more than 8 rows (a prompt, a chunk, a perplexity window) rounds each row to 8
    /// bits per block of 32 and multiplies the codes as integers, as llama.cpp multiplies Q8_0
    /// and Q4_1: faster prompts (Q8_0 about 1.7x with VNNI, 1.25-1.29x with AVX2), but the
    /// result moves by the rows' rounding (docs/benchmarks.md: on SmolLM2 perplexity +0.3-0.4%,
    /// and greedy text can differ from the float path's). Q8_0 on CPUs with AVX2 and no VNNI
    /// gives the VNNI kernel's results with AVX2's byte products; Q4_1 takes the AVX2 kernel
    /// everywhere. Decode steps, CPUs without AVX2 and other backends are unchanged.
    pub fn with_int8_prompt_products(mut self, on: bool) -> Self {
        self.int8_prompt_products = on;
        self
    }

    /// Whether backend `B` on this CPU runs the integer products that
    /// [`BlockWeight::with_int8_prompt_products`] asks for (flex on a CPU with AVX-512 VNNI or
    /// AVX2); elsewhere the option changes nothing, results included.
    pub fn int8_prompt_products_run_on<B: Backend>() -> bool {
        crate::kernels::multiplies_int8_prompts::<B>()
    }

    /// Whether a prompt's products round their rows to 8 bits
    /// ([`BlockWeight::with_int8_prompt_products`]).
    pub fn int8_prompt_products(&self) -> bool {
        self.int8_prompt_products
    }

    /// `[d_output, d_input]`.
    pub fn dims(&self) -> [usize; 2] {
        [self.d_output, self.d_input]
    }

    /// The blocks, row after row.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.d_input / BLOCK_VALUES * self.format.block_bytes()
    }

    fn blocks(&self) -> std::slice::ChunksExact<'_, u8> {
        self.bytes.chunks_exact(self.format.block_bytes())
    }

    /// Rows `rows` dequantized into `out` (`rows.len() * d_input` values, row-major).
    pub fn dequantize_rows(&self, rows: std::ops::Range<usize>, out: &mut [f32]) {
        let row_bytes = self.row_bytes();
        let bytes = &self.bytes[rows.start * row_bytes..rows.end * row_bytes];
        for (block, out) in bytes
            .chunks_exact(self.format.block_bytes())
            .zip(out.chunks_exact_mut(BLOCK_VALUES))
        {
            dequantize_block(self.format, block, out);
        }
    }

    /// The whole matrix as f32, `[d_output, d_input]` row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.d_output * self.d_input];
        self.dequantize_rows(0..self.d_output, &mut out);
        out
    }
}

/// A block's scale and offset (0 for Q8_0).
pub(crate) fn block_params(format: BlockFormat, block: &[u8]) -> [f32; 2] {
    let scale = f16::from_le_bytes([block[0], block[1]]).to_f32();
    match format {
        BlockFormat::Q8_0 => [scale, 0.0],
        BlockFormat::Q4_1 => [scale, f16::from_le_bytes([block[2], block[3]]).to_f32()],
    }
}

/// One block of `format` widened into `out` (32 values).
fn dequantize_block(format: BlockFormat, block: &[u8], out: &mut [f32]) {
    let [scale, offset] = block_params(format, block);
    match format {
        BlockFormat::Q8_0 => {
            for (out, &code) in out.iter_mut().zip(&block[2..]) {
                *out = scale * code as i8 as f32;
            }
        }
        BlockFormat::Q4_1 => {
            let (low, high) = out.split_at_mut(BLOCK_VALUES / 2);
            for ((low, high), &byte) in low.iter_mut().zip(high).zip(&block[4..]) {
                *low = scale * (byte & 0x0f) as f32 + offset;
                *high = scale * (byte >> 4) as f32 + offset;
            }
        }
    }
}

fn quantize_q8_0(block: &[f32], bytes: &mut Vec<u8>) {
    let max = block.iter().fold(0f32, |a, &x| a.max(x.abs()));
    let scale = max / 127.0;
    let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    bytes.extend_from_slice(&f16::from_f32(scale).to_le_bytes());
    bytes.extend(
        block
            .iter()
            .map(|&x| (x * inverse).round().clamp(-127.0, 127.0) as i8 as u8),
    );
}

fn quantize_q4_1(block: &[f32], bytes: &mut Vec<u8>) {
    let min = block.iter().copied().fold(f32::INFINITY, f32::min);
    let max = block.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let scale = (max - min) / 15.0;
    let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    bytes.extend_from_slice(&f16::from_f32(scale).to_le_bytes());
    bytes.extend_from_slice(&f16::from_f32(min).to_le_bytes());
    let code = |x: f32| ((x - min) * inverse).round().clamp(0.0, 15.0) as u8;
    let (low, high) = block.split_at(BLOCK_VALUES / 2);
    bytes.extend(
        low.iter()
            .zip(high)
            .map(|(&l, &h)| code(l) | (code(h) << 4)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
                (x as f32 / (1 << 24) as f32 - 0.3) * if i % 7 == 0 { 4.0 } else { 1.0 }
            })
            .collect()
    }

    #[test]
    fn round_trips_within_the_formats_bound_against_f64() {
        let data = values(5 * 96, 7);
        for format in [BlockFormat::Q8_0, BlockFormat::Q4_1] {
            let weight = BlockWeight::quantize(format, [5, 96], &data).unwrap();
            assert_eq!(weight.bytes().len(), 5 * 3 * format.block_bytes());
            let back = weight.dequantize();
            for (block, back) in data.chunks(32).zip(back.chunks(32)) {
                let bound = format.error_bound(block);
                for (&x, &y) in block.iter().zip(back) {
                    assert!(
                        ((x as f64) - (y as f64)).abs() <= bound,
                        "{format}: {x} -> {y} (bound {bound})"
                    );
                }
            }
        }
    }

    #[test]
    fn decodes_llama_cpp_byte_layouts() {
        // Q8_0: d = 0.5, codes 0, -1, 2, ...
        let mut block = f16::from_f32(0.5).to_le_bytes().to_vec();
        block.extend((0..32).map(|i: i32| (if i % 2 == 1 { -i } else { i }) as i8 as u8));
        let weight = BlockWeight::new(BlockFormat::Q8_0, [1, 32], block).unwrap();
        let values = weight.dequantize();
        assert_eq!(&values[..4], &[0.0, -0.5, 1.0, -1.5]);
        // Q4_1: d = 2, m = -1; byte j = j | (15 - j) << 4: value j = 2j - 1, value j + 16 = 29 - 2j.
        let mut block = f16::from_f32(2.0).to_le_bytes().to_vec();
        block.extend_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let values = BlockWeight::new(BlockFormat::Q4_1, [1, 32], block)
            .unwrap()
            .dequantize();
        for j in 0..16 {
            assert_eq!(values[j], 2.0 * j as f32 - 1.0);
            assert_eq!(values[j + 16], 29.0 - 2.0 * j as f32);
        }
    }

    #[test]
    fn refuses_sizes_that_disagree_and_scales_that_are_not_finite() {
        assert!(BlockWeight::new(BlockFormat::Q8_0, [2, 32], vec![0; 67]).is_err());
        assert!(BlockWeight::new(BlockFormat::Q4_1, [1, 48], vec![0; 30]).is_err());
        assert!(BlockWeight::new(BlockFormat::Q8_0, [0, 32], vec![]).is_err());
        let mut block = f16::NAN.to_le_bytes().to_vec();
        block.extend([0; 32]);
        assert!(BlockWeight::new(BlockFormat::Q8_0, [1, 32], block).is_err());
        assert!(BlockWeight::quantize(BlockFormat::Q4_1, [1, 32], &[f32::INFINITY; 32]).is_err());
        assert!(BlockWeight::quantize(BlockFormat::Q4_1, [1, 32], &[0.0; 31]).is_err());
    }
}
