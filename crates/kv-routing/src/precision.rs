//! [`Precision`]: the floating-point type of weights, activations and KV caches, as programs
//! choose it at load time (`--dtype`) and as checkpoints are exported.

use std::fmt;
use std::str::FromStr;

/// Floating-point type of a model's tensors: what a device computes in, and what an exported
/// checkpoint stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// 32-bit floats (the default): exact.
    #[default]
    F32,
    /// IEEE half: half the weight and KV-cache bytes of f32.
    F16,
    /// bfloat16: f32's range with f16's size (the usual type of Llama-family releases).
    BF16,
}

impl Precision {
    /// `f32`, `f16` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
        }
    }

    /// The `torch_dtype` name of Hugging Face's `config.json`: `float32`, `float16`, `bfloat16`.
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::BF16 => "bfloat16",
        }
    }

    /// Bytes per value.
    pub fn bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
        }
    }
}

impl FromStr for Precision {
    type Err = String;

    /// Either naming, in any case: `f16` or `float16`, `BF16` or `bfloat16`, ...
    fn from_str(name: &str) -> Result<Self, String> {
        match name.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::BF16),
            _ => Err(format!("unknown precision `{name}` (f32, f16 or bf16)")),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::Precision;

    #[test]
    fn both_namings_parse_in_any_case_and_round_trip() {
        for precision in [Precision::F32, Precision::F16, Precision::BF16] {
            assert_eq!(precision.name().parse(), Ok(precision));
            assert_eq!(precision.torch_name().parse(), Ok(precision));
            assert_eq!(precision.name().to_uppercase().parse(), Ok(precision));
        }
        assert!("f64".parse::<Precision>().unwrap_err().contains("f64"));
    }
}
