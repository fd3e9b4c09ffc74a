//! [`CliError`]: why a command failed, printed as one line by `main`.

use std::path::PathBuf;

use kv_routing::KvRoutingError;
use kv_routing_hf::HfError;
use kv_routing_train::TrainError;

/// What can make a command fail.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Training, evaluation, a training checkpoint, data or a plan.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// Loading or exporting a model, or its tokenizer.
    #[error(transparent)]
    Load(#[from] HfError),
    /// The model refused an input (generation).
    #[error(transparent)]
    Model(#[from] KvRoutingError),
    /// A file of the command's own output could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An option or input is out of range.
    #[error("invalid setting: {0}")]
    Setting(String),
    /// The prompt alone is longer than the model's context.
    #[error(
        "the prompt is {prompt_tokens} tokens, more than the model's maximum sequence length of {max_seq_len}"
    )]
    PromptTooLong {
        /// Tokens of the prompt.
        prompt_tokens: usize,
        /// The model's maximum sequence length.
        max_seq_len: usize,
    },
    /// The prompt and the tokens asked for do not fit the model's context.
    #[error(
        "{prompt_tokens} prompt tokens and --max-new-tokens {max_new_tokens} need {positions} positions, more than the model's maximum sequence length of {max_seq_len} (the last new token is not fed back): --max-new-tokens can be at most {allowed} with this prompt"
    )]
    ContextTooLong {
        /// Tokens of the prompt.
        prompt_tokens: usize,
        /// New tokens asked for.
        max_new_tokens: usize,
        /// Positions the generation would run the model at.
        positions: usize,
        /// The model's maximum sequence length.
        max_seq_len: usize,
        /// The most new tokens that fit after this prompt.
        allowed: usize,
    },
}

impl CliError {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        CliError::Io {
            path: path.into(),
            source: error.into(),
        }
    }
}

/// Shorthand for results of the commands.
pub type Result<T> = std::result::Result<T, CliError>;
