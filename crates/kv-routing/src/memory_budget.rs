//! [`MemoryBudget`]: a limit checked *before* allocating state whose size the caller chooses —
//! a KV cache of `batch × capacity` slots, the activations of a forward pass over a batch — so
//! that a request too large fails with the bytes it needs, instead of aborting the process
//! mid-allocation (Rust aborts when an allocation fails) or being killed by the kernel.
//!
//! # Contract
//! - Sizes are counted in `u128` with checked arithmetic: a request larger than `isize::MAX`
//!   bytes (no allocation can be) is refused under any budget, [`MemoryBudget::UNLIMITED`]
//!   included, and reported as "more bytes than can be counted".
//! - A figure checked against the budget is a *lower bound* on what the operation allocates (the
//!   KV cache exactly; for a forward pass, the tensors it must hold at its peak), so a refusal
//!   never turns away work that would have fitted; the backend's own workspace comes on top.
//! - [`MemoryBudget::available`] reads the memory the operating system can give now
//!   (`MemAvailable` of `/proc/meminfo` on Linux): the right budget for CPU backends. A GPU's
//!   memory is its own; give its size with [`MemoryBudget::bytes`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::byte_count::human_bytes;
use crate::error::{KvRoutingError, Result};

/// A limit on the bytes of one request (see the module docs). Serializes as the limit in
/// bytes, or `null` for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MemoryBudget {
    limit: Option<u64>,
}

impl MemoryBudget {
    /// No limit: only sizes that overflow are refused.
    pub const UNLIMITED: Self = Self { limit: None };

    /// At most `limit` bytes.
    pub const fn bytes(limit: u64) -> Self {
        Self { limit: Some(limit) }
    }

    /// The memory the operating system reports available now (Linux: `MemAvailable`);
    /// [`MemoryBudget::UNLIMITED`] where it cannot be read.
    pub fn available() -> Self {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|line| line.strip_prefix("MemAvailable:"))
                    .and_then(|rest| rest.trim().strip_suffix("kB"))
                    .and_then(|kib| kib.trim().parse::<u64>().ok())
            })
            .map_or(Self::UNLIMITED, |kib| Self::bytes(kib.saturating_mul(1024)))
    }

    /// The limit in bytes, if any.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Checks that `what` may allocate `needed` bytes (`None`: more than `u128` counts).
    pub fn check(&self, what: &str, needed: Option<u128>) -> Result<()> {
        // No allocation can exceed isize::MAX bytes (Rust's limit, and more than any address
        // space): larger sizes are refused whatever the budget.
        let needed = needed.filter(|&n| n <= isize::MAX as u128);
        match (needed, self.limit) {
            (Some(_), None) => Ok(()),
            (Some(needed), Some(limit)) if needed <= limit as u128 => Ok(()),
            (needed, limit) => Err(KvRoutingError::MemoryBudgetExceeded {
                what: what.to_string(),
                needed_bytes: needed,
                budget_bytes: limit,
            }),
        }
    }
}

/// `a * b * ...` in `u128`, `None` on overflow.
pub(crate) fn checked_product(factors: &[usize]) -> Option<u128> {
    factors
        .iter()
        .try_fold(1u128, |product, &f| product.checked_mul(f as u128))
}

impl fmt::Display for MemoryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.limit {
            None => write!(f, "unlimited"),
            Some(limit) => write!(f, "{}", human_bytes(limit as u128)),
        }
    }
}

/// Parses `none`/`unlimited`, `available`, or a size: a number of bytes with an optional unit
/// (`KB`, `MB`, `GB`, `TB` are powers of 1000; `KiB`, `MiB`, `GiB`, `TiB` powers of 1024), e.g.
/// `8GiB`, `512MB`, `1.5GB`.
impl FromStr for MemoryBudget {
    type Err = KvRoutingError;

    fn from_str(text: &str) -> Result<Self> {
        let text = text.trim();
        match text.to_ascii_lowercase().as_str() {
            "none" | "unlimited" => return Ok(Self::UNLIMITED),
            "available" => return Ok(Self::available()),
            _ => {}
        }
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "tib" => 1 << 40,
            _ => return Err(bad_budget(text)),
        };
        let value: f64 = number.parse().map_err(|_| bad_budget(text))?;
        let bytes = value * scale as f64;
        if !(bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64) {
            return Err(bad_budget(text));
        }
        Ok(Self::bytes(bytes as u64))
    }
}

fn bad_budget(text: &str) -> KvRoutingError {
    KvRoutingError::InvalidConfig(format!(
        "memory budget `{text}`: expected a size such as 8GiB or 512MB, `available` or `none`"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_limits_refuse_with_the_bytes_needed() {
        assert_eq!(
            "8GiB".parse::<MemoryBudget>().unwrap(),
            MemoryBudget::bytes(8 << 30)
        );
        assert_eq!(
            "1.5GB".parse::<MemoryBudget>().unwrap(),
            MemoryBudget::bytes(1_500_000_000)
        );
        assert_eq!(
            "4096".parse::<MemoryBudget>().unwrap(),
            MemoryBudget::bytes(4096)
        );
        assert_eq!(
            "none".parse::<MemoryBudget>().unwrap(),
            MemoryBudget::UNLIMITED
        );
        for bad in ["", "GB", "-1GB", "8 parsecs", "1e400"] {
            assert!(bad.parse::<MemoryBudget>().is_err(), "{bad}");
        }
        let budget = MemoryBudget::bytes(1000);
        assert!(budget.check("a cache", Some(1000)).is_ok());
        let error = budget.check("a cache", Some(1001)).unwrap_err().to_string();
        assert!(
            error.contains("1001 bytes") && error.contains("1000 bytes"),
            "{error}"
        );
        assert!(MemoryBudget::UNLIMITED
            .check("x", Some(isize::MAX as u128))
            .is_ok());
        assert!(MemoryBudget::UNLIMITED
            .check("x", Some(isize::MAX as u128 + 1))
            .is_err());
        assert!(MemoryBudget::UNLIMITED.check("x", None).is_err());
        assert_eq!(checked_product(&[usize::MAX, usize::MAX, 2]), None);
        assert_eq!(checked_product(&[3, 4]), Some(12));
    }

    #[test]
    fn available_memory_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            let limit = MemoryBudget::available()
                .limit()
                .expect("MemAvailable is read");
            assert!(limit > 0);
        }
    }
}
