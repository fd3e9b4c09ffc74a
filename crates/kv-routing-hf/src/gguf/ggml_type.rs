//! [`GgmlType`]: the element types of GGUF tensors, their block geometry, and which of them
//! this crate dequantizes.

/// A tensor element type, by its id in the GGUF file (ggml's `ggml_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlType(pub u32);

/// Every ggml type id this crate can name in a message (ids without a name are reported by
/// number).
const NAMES: [(u32, &str); 37] = [
    (0, "F32"),
    (1, "F16"),
    (2, "Q4_0"),
    (3, "Q4_1"),
    (6, "Q5_0"),
    (7, "Q5_1"),
    (8, "Q8_0"),
    (9, "Q8_1"),
    (10, "Q2_K"),
    (11, "Q3_K"),
    (12, "Q4_K"),
    (13, "Q5_K"),
    (14, "Q6_K"),
    (15, "Q8_K"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (30, "BF16"),
    (31, "Q4_0_4_4"),
    (32, "Q4_0_4_8"),
    (33, "Q4_0_8_8"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (36, "IQ4_NL_4_4"),
    (37, "IQ4_NL_4_8"),
    (39, "MXFP4"),
];

impl GgmlType {
    /// 32-bit float.
    pub const F32: Self = Self(0);
    /// IEEE half.
    pub const F16: Self = Self(1);
    /// 4-bit, one f16 scale per 32 (`(q - 8) * d`).
    pub const Q4_0: Self = Self(2);
    /// 4-bit, f16 scale and minimum per 32 (`q * d + m`).
    pub const Q4_1: Self = Self(3);
    /// 5-bit, one f16 scale per 32.
    pub const Q5_0: Self = Self(6);
    /// 5-bit, f16 scale and minimum per 32.
    pub const Q5_1: Self = Self(7);
    /// 8-bit, one f16 scale per 32.
    pub const Q8_0: Self = Self(8);
    /// k-quant, 4-bit in super-blocks of 256 with 6-bit sub-block scales and minima.
    pub const Q4_K: Self = Self(12);
    /// k-quant, 5-bit in super-blocks of 256 with 6-bit sub-block scales and minima.
    pub const Q5_K: Self = Self(13);
    /// k-quant, 6-bit in super-blocks of 256 with 8-bit sub-block scales.
    pub const Q6_K: Self = Self(14);
    /// bfloat16.
    pub const BF16: Self = Self(30);

    /// The types [`dequantize`](super::dequantize::dequantize) reads.
    pub const SUPPORTED: [Self; 11] = [
        Self::F32,
        Self::F16,
        Self::BF16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
    ];

    /// ggml's name of the type (`Q4_K`), or `type <id>` for an id it does not know.
    pub fn name(self) -> String {
        NAMES
            .iter()
            .find(|(id, _)| *id == self.0)
            .map_or_else(|| format!("type {}", self.0), |(_, name)| name.to_string())
    }

    /// `(elements per block, bytes per block)`, for the types whose layout this crate knows
    /// (the supported ones and the plain integer/float types); `None` otherwise.
    pub fn block_geometry(self) -> Option<(usize, usize)> {
        Some(match self.0 {
            0 => (1, 4),
            1 | 30 => (1, 2),
            2 => (32, 18),
            3 => (32, 20),
            6 => (32, 22),
            7 => (32, 24),
            8 => (32, 34),
            9 => (32, 36),
            10 => (256, 84),
            11 => (256, 110),
            12 => (256, 144),
            13 => (256, 176),
            14 => (256, 210),
            15 => (256, 292),
            24 => (1, 1),
            25 => (1, 2),
            26 => (1, 4),
            27 | 28 => (1, 8),
            _ => return None,
        })
    }

    /// Whether [`dequantize`](super::dequantize::dequantize) reads this type.
    pub fn is_supported(self) -> bool {
        Self::SUPPORTED.contains(&self)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}
