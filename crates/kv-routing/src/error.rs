//! The one error type of the crate.

use thiserror::Error;

/// Everything that can go wrong when building routes, modules and caches, or when running them.
///
/// Every variant names the offending layer, sequence or value so that the message alone says
/// what to fix.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum KvRoutingError {
    /// A route (`src` per layer) breaks one of the route rules.
    #[error("invalid route: {0}")]
    InvalidRoute(String),

    /// An inference plan (a set of cached layers) breaks one of the plan rules.
    #[error("invalid cache plan: {0}")]
    InvalidPlan(String),

    /// A router or model configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// A route or plan was built for a different number of layers than the model has.
    #[error("route has {route_layers} layers but the model has {model_layers}")]
    LayerCountMismatch {
        /// Layers in the route.
        route_layers: usize,
        /// Layers in the model.
        model_layers: usize,
    },

    /// A tensor handed to a module or to the cache has the wrong shape.
    #[error("shape mismatch in {context}: expected {expected:?}, got {actual:?}")]
    ShapeMismatch {
        /// Where the tensor was handed over.
        context: String,
        /// The expected dimensions.
        expected: Vec<usize>,
        /// The dimensions that arrived.
        actual: Vec<usize>,
    },

    /// A step would write past the cache's preallocated capacity.
    #[error(
        "KV cache capacity exceeded: {used} slots used + {requested} new > capacity {capacity}"
    )]
    CapacityExceeded {
        /// Slots already holding tokens.
        used: usize,
        /// Slots the step asked for.
        requested: usize,
        /// Preallocated slots.
        capacity: usize,
    },

    /// A token position would exceed the rotary table of the model.
    #[error("sequence {sequence}: position {position} exceeds the maximum sequence length {max_seq_len}")]
    SequenceTooLong {
        /// Index of the sequence in the batch.
        sequence: usize,
        /// The position that does not fit.
        position: usize,
        /// The model's maximum sequence length.
        max_seq_len: usize,
    },

    /// Per-sequence lengths that do not fit the batch they describe.
    #[error("invalid sequence lengths: {0}")]
    InvalidLengths(String),

    /// A layer's keys/values were asked for but are not present (not a source, or dropped).
    #[error("layer {layer}: {reason}")]
    MissingKv {
        /// The layer whose keys/values are missing.
        layer: usize,
        /// Why they are missing.
        reason: String,
    },

    /// A token id outside the vocabulary.
    #[error("token {token} at sequence {sequence}, position {position} is outside the vocabulary of size {vocab_size}")]
    TokenOutOfRange {
        /// The token id.
        token: u32,
        /// Index of the sequence in the batch.
        sequence: usize,
        /// Index in the sequence.
        position: usize,
        /// The vocabulary size.
        vocab_size: usize,
    },

    /// A request (a KV cache, a forward pass's activations) would take more memory than its
    /// [`MemoryBudget`](crate::MemoryBudget); refused before anything was allocated.
    #[error("{what} needs {}, over the memory budget of {}", needed_bytes.map_or_else(|| "more bytes than can be counted".to_string(), crate::byte_count::human_bytes), budget_bytes.map_or_else(|| "any machine".to_string(), |b| crate::byte_count::human_bytes(b as u128)))]
    MemoryBudgetExceeded {
        /// What was asked for, with its sizes.
        what: String,
        /// Bytes it needs at least (`None`: more than any allocation can hold).
        needed_bytes: Option<u128>,
        /// The budget (`None`: unlimited, refused because the size overflows).
        budget_bytes: Option<u64>,
    },

    /// The backend failed to run queued work (a device error, reported when waiting on it).
    #[error("backend execution failed: {0}")]
    Execution(String),

    /// (De)serialization of a route, plan or config failed.
    #[error("serialization: {0}")]
    Serde(String),
}

/// Shorthand for results of this crate.
pub type Result<T> = core::result::Result<T, KvRoutingError>;

impl From<burn::tensor::backend::ExecutionError> for KvRoutingError {
    fn from(error: burn::tensor::backend::ExecutionError) -> Self {
        KvRoutingError::Execution(error.to_string())
    }
}
