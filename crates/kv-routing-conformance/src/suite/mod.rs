//! The conformance tests, each a generic function over the backend.

pub mod block_weights;
pub mod cache_memory;
pub mod cached;
pub mod calibration;
pub mod errors;
pub mod gradients;
pub mod kv_dtypes;
pub mod mixed_plans;
pub mod oracle_agreement;
pub mod properties;
pub mod retarget;
pub mod routes;
pub mod sampling;
pub mod serving;
pub mod sharing_adapters;
