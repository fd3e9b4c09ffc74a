//! The error type of training, evaluation and checkpoints.

use std::path::PathBuf;

use kv_routing::KvRoutingError;
use thiserror::Error;

/// What can go wrong outside the model itself: files, checkpoints, data, settings.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path at fault.
        path: PathBuf,
        /// What happened (an `std::io::Error` for file operations).
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A checkpoint is missing a part, or a part does not parse.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint directory.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The training data cannot serve the requested samples.
    #[error("data: {0}")]
    Data(String),
    /// A training or evaluation setting is out of range.
    #[error("invalid setting: {0}")]
    Config(String),
    /// The model rejected its input or configuration.
    #[error(transparent)]
    Model(#[from] KvRoutingError),
    /// A run on several nodes could not start or go on: a node did not join in time, differs
    /// from the others, died or stopped.
    #[error("nodes: {0}")]
    Node(String),
    /// A Hugging Face checkpoint or tokenizer could not be read or written.
    #[error(transparent)]
    Pretrained(#[from] kv_routing_hf::HfError),
}

impl TrainError {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        TrainError::Io {
            path: path.into(),
            source: error.into(),
        }
    }

    pub(crate) fn checkpoint(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        TrainError::Checkpoint {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, TrainError>;
