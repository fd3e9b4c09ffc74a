//! [`HfError`]: everything that can go wrong reading or writing a Hugging Face checkpoint, each
//! naming the file, field or tensor at fault.

use std::path::{Path, PathBuf};

/// Result of this crate.
pub type Result<T> = std::result::Result<T, HfError>;

/// An error reading or writing a Hugging Face checkpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HfError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed (an `std::io::Error` for file operations).
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// `config.json` is not valid JSON or lacks a field.
    #[error("{path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
    /// The checkpoint's architecture or one of its settings is not supported.
    #[error("unsupported checkpoint: {0}")]
    Unsupported(String),
    /// A tensor the architecture needs is not in the checkpoint.
    #[error("tensor `{name}` is missing from the checkpoint ({searched})")]
    MissingTensor {
        /// Hugging Face name of the tensor.
        name: String,
        /// Where it was looked for.
        searched: String,
    },
    /// The checkpoint holds a tensor the architecture has no place for.
    #[error("tensor `{name}` in {file} is not part of a {architecture} model with this config")]
    UnexpectedTensor {
        /// Hugging Face name of the tensor.
        name: String,
        /// The file holding it.
        file: String,
        /// The architecture being loaded.
        architecture: String,
    },
    /// A tensor has the wrong shape for the config.
    #[error("tensor `{name}` has shape {actual:?}, the config needs {expected:?}")]
    TensorShape {
        /// Hugging Face name of the tensor.
        name: String,
        /// Shape required by `config.json`.
        expected: Vec<usize>,
        /// Shape in the file.
        actual: Vec<usize>,
    },
    /// A tensor is stored in a type other than f32, f16 or bf16.
    #[error("tensor `{name}` is stored as {dtype}; only F32, F16 and BF16 are supported")]
    TensorDtype {
        /// Hugging Face name of the tensor.
        name: String,
        /// The stored type.
        dtype: String,
    },
    /// A safetensors file is malformed.
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A GGUF file is malformed.
    #[error("{path}: not a valid GGUF file: {message}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A GGUF tensor has an element type this crate does not dequantize.
    #[error(
        "tensor `{name}` is stored as {ggml_type}, which is not supported (supported: {supported})"
    )]
    GgufTensorType {
        /// GGUF name of the tensor.
        name: String,
        /// ggml's name of its type.
        ggml_type: String,
        /// The supported types.
        supported: String,
    },
    /// A training checkpoint (a kv-routing-train run's directory of Burn records) is missing a
    /// part, or a part does not parse.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint directory.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A directory written through [`StagedDir`](crate::StagedDir) has never been committed:
    /// its first write was interrupted, so there is nothing to read.
    #[error(
        "{dir}: nothing was ever committed here: its first write was interrupted before it finished ({staging} holds the unfinished files); write it again"
    )]
    Uncommitted {
        /// The directory asked for.
        dir: PathBuf,
        /// The staging directory the interrupted write left.
        staging: PathBuf,
    },
    /// An export asked for something that cannot be written.
    #[error("export: {0}")]
    Export(String),
    /// The tokenizer could not be loaded or failed on its input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The model rejected the configuration or an input.
    #[error(transparent)]
    Model(#[from] kv_routing::KvRoutingError),
}

impl HfError {
    pub(crate) fn io(
        path: impl AsRef<Path>,
        error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        HfError::Io {
            path: path.as_ref().to_path_buf(),
            source: error.into(),
        }
    }

    pub(crate) fn checkpoint(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        HfError::Checkpoint {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }

    pub(crate) fn config(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        HfError::Config {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }
}
