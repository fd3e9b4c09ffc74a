//! Dequantization of GGUF tensor data to `f32`, block format by block format, as ggml defines
//! them (`ggml-quants.c`, `dequantize_row_*`), with the same f32 arithmetic.
//!
//! Every block format stores its values in fixed-size blocks along a tensor's innermost axis;
//! scales are IEEE halves. The k-quants group 256 values into a super-block with one f16
//! scale (and minimum) and per-sub-block 6- or 8-bit factors.
//!
//! Checked against `gguf-py`'s numpy dequantizers (llama.cpp's own Python package) on random
//! blocks of every type: `tests/fixtures/gguf_quant_blocks.json`.

use half::{bf16, f16};

use super::ggml_type::GgmlType;

/// `bytes` of `n_values` values of type `ty` as f32, or `None` when the type is not one of
/// [`GgmlType::SUPPORTED`] or the byte count does not match (callers validate both first).
pub fn dequantize(ty: GgmlType, bytes: &[u8], n_values: usize) -> Option<Vec<f32>> {
    let (block_values, block_bytes) = ty.block_geometry()?;
    if !n_values.is_multiple_of(block_values)
        || (n_values / block_values).checked_mul(block_bytes) != Some(bytes.len())
    {
        return None;
    }
    let mut out = Vec::with_capacity(n_values);
    let blocks = bytes.chunks_exact(block_bytes);
    match ty {
        GgmlType::F32 => out.extend(blocks.map(|b| f32::from_le_bytes(array(b, 0)))),
        GgmlType::F16 => out.extend(blocks.map(|b| half_at(b, 0))),
        GgmlType::BF16 => out.extend(blocks.map(|b| bf16::from_le_bytes(array(b, 0)).to_f32())),
        GgmlType::Q4_0 => blocks.for_each(|b| q4_0(b, &mut out)),
        GgmlType::Q4_1 => blocks.for_each(|b| q4_1(b, &mut out)),
        GgmlType::Q5_0 => blocks.for_each(|b| q5_0(b, &mut out)),
        GgmlType::Q5_1 => blocks.for_each(|b| q5_1(b, &mut out)),
        GgmlType::Q8_0 => blocks.for_each(|b| q8_0(b, &mut out)),
        GgmlType::Q4_K => blocks.for_each(|b| q4_k(b, &mut out)),
        GgmlType::Q5_K => blocks.for_each(|b| q5_k(b, &mut out)),
        GgmlType::Q6_K => blocks.for_each(|b| q6_k(b, &mut out)),
        _ => return None,
    }
    Some(out)
}

fn array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    bytes[at..at + N].try_into().expect("block length checked")
}

fn half_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes(array(bytes, at)).to_f32()
}

/// The 32 four-bit values of a block's 16 bytes: value `j` is the low nibble of byte `j`,
/// value `j + 16` the high one.
fn four_bit_values(qs: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let low = qs.iter().map(|&q| q & 0x0f);
    low.chain(qs.iter().map(|&q| q >> 4))
}

/// The 32 five-bit values of a Q5 block: the four-bit values, with bit `j` of `qh` as the fifth
/// bit of value `j`.
fn five_bit_values(qs: &[u8], qh: u32) -> impl Iterator<Item = u8> + '_ {
    four_bit_values(qs)
        .enumerate()
        .map(move |(j, q)| q | ((((qh >> j) & 1) as u8) << 4))
}

/// `d`, 16 bytes of nibbles: `(q - 8) * d`.
fn q4_0(block: &[u8], out: &mut Vec<f32>) {
    let d = half_at(block, 0);
    out.extend(four_bit_values(&block[2..18]).map(|q| (q as i32 - 8) as f32 * d));
}

/// `d`, `m`, nibbles: `q * d + m`.
fn q4_1(block: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (half_at(block, 0), half_at(block, 2));
    out.extend(four_bit_values(&block[4..20]).map(|q| q as f32 * d + m));
}

/// `d`, 32 fifth bits, nibbles: `(q - 16) * d`.
fn q5_0(block: &[u8], out: &mut Vec<f32>) {
    let d = half_at(block, 0);
    let qh = u32::from_le_bytes(array(block, 2));
    out.extend(five_bit_values(&block[6..22], qh).map(|q| (q as i32 - 16) as f32 * d));
}

/// `d`, `m`, 32 fifth bits, nibbles: `q * d + m`.
fn q5_1(block: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (half_at(block, 0), half_at(block, 2));
    let qh = u32::from_le_bytes(array(block, 4));
    out.extend(five_bit_values(&block[8..24], qh).map(|q| q as f32 * d + m));
}

/// `d`, 32 signed bytes: `q * d`.
fn q8_0(block: &[u8], out: &mut Vec<f32>) {
    let d = half_at(block, 0);
    out.extend(block[2..34].iter().map(|&q| (q as i8) as f32 * d));
}

/// Scale and minimum of sub-block `j` (0..8) from the 12 packed bytes of a Q4_K/Q5_K block:
/// 6 bits each, the low 4 sub-blocks in the first 8 bytes, the high ones split over the last 4
/// and the top bits of the first 8 (ggml's `get_scale_min_k4`).
fn scale_min_k4(j: usize, scales: &[u8]) -> (f32, f32) {
    let (scale, min) = if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    };
    (scale as f32, min as f32)
}

/// `d`, `dmin`, 12 bytes of scales, 128 bytes of nibbles; 4 groups of 64 values, each the low
/// then the high nibbles of 32 bytes, with sub-block scales `2g` and `2g + 1`.
fn q4_k(block: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (half_at(block, 0), half_at(block, 2));
    let scales = &block[4..16];
    for (group, qs) in block[16..144].chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * group, scales);
        let (sc2, m2) = scale_min_k4(2 * group + 1, scales);
        let (d1, min1, d2, min2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        out.extend(qs.iter().map(|&q| d1 * (q & 0x0f) as f32 - min1));
        out.extend(qs.iter().map(|&q| d2 * (q >> 4) as f32 - min2));
    }
}

/// Q4_K with a fifth bit per value: 32 bytes of high bits after the scales, bit `2g` (low
/// nibbles) and `2g + 1` (high nibbles) of byte `l` for value `l` of group `g`.
fn q5_k(block: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (half_at(block, 0), half_at(block, 2));
    let scales = &block[4..16];
    let qh = &block[16..48];
    for (group, qs) in block[48..176].chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * group, scales);
        let (sc2, m2) = scale_min_k4(2 * group + 1, scales);
        let (d1, min1, d2, min2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        let (low_bit, high_bit) = (1u8 << (2 * group), 1u8 << (2 * group + 1));
        let fifth = |l: usize, bit: u8| if qh[l] & bit != 0 { 16 } else { 0 };
        out.extend(
            qs.iter()
                .enumerate()
                .map(|(l, &q)| d1 * ((q & 0x0f) + fifth(l, low_bit)) as f32 - min1),
        );
        out.extend(
            qs.iter()
                .enumerate()
                .map(|(l, &q)| d2 * ((q >> 4) + fifth(l, high_bit)) as f32 - min2),
        );
    }
}

/// 128 bytes of low nibbles, 64 of 2-bit highs, 16 signed scales, `d` last; two halves of 128
/// values, each four runs of 32 with a scale per 16 values: `d * scale * (q - 32)`.
fn q6_k(block: &[u8], out: &mut Vec<f32>) {
    let d = half_at(block, 208);
    let mut values = [0f32; 256];
    for half in 0..2 {
        let ql = &block[64 * half..64 * half + 64];
        let qh = &block[128 + 32 * half..128 + 32 * half + 32];
        let scales = &block[192 + 8 * half..192 + 8 * half + 8];
        let out = &mut values[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q = [
                (ql[l] & 0x0f) | ((qh[l] & 3) << 4),
                (ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4),
                (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
            ];
            for (run, &q) in q.iter().enumerate() {
                let scale = scales[is + 2 * run] as i8 as f32;
                out[l + 32 * run] = d * scale * (q as i32 - 32) as f32;
            }
        }
    }
    out.extend_from_slice(&values);
}
