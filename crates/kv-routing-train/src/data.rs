//! Training data: the built-in synthetic corpus or a user's UTF-8 text file, served as
//! deterministic batches of tokens (bytes, or a Hugging Face tokenizer's ids).
//!
//! Every sample is a pure function of `(seed, split, index)`, so a run is reproducible and a
//! resumed run sees exactly the batches the uninterrupted run would have seen.

use std::path::{Path, PathBuf};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::synthetic::synthetic_sample;

// A module of its own, which the synthetic corpus shares without depending on this one; named
// here with the rest of the data API.
pub use crate::sample::Sample;

/// Where samples come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataSource {
    /// The built-in associative-recall + structured-text corpus, generated from `seed`.
    Synthetic {
        /// Seed of the generator.
        seed: u64,
    },
    /// A UTF-8 text file: the first 90% of its tokens train, the last 10% validate.
    TextFile {
        /// Path of the file.
        path: PathBuf,
        /// Seed of the window offsets.
        seed: u64,
        /// A `tokenizer.json` to tokenize with; `None`: byte tokens.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tokenizer: Option<PathBuf>,
    },
}

/// Training or validation samples (never overlapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Training samples.
    Train,
    /// Validation samples.
    Validation,
}

impl Split {
    fn stream(self, index: u64) -> u64 {
        index * 2 + matches!(self, Split::Validation) as u64
    }
}

/// Inputs and next-token targets of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `[batch][seq_len]` input tokens.
    pub inputs: Vec<Vec<u32>>,
    /// `[batch][seq_len]` targets (inputs shifted by one).
    pub targets: Vec<Vec<u32>>,
    /// `[batch][seq_len]` recall-answer flags of the targets.
    pub recall: Vec<Vec<bool>>,
}

/// A source of samples of a fixed length.
#[derive(Debug, Clone)]
pub struct Dataset {
    source: DataSource,
    seq_len: usize,
    text: Option<Vec<u32>>,
    /// The whole text validates, in consecutive windows (see [`Dataset::open_heldout`]).
    heldout: bool,
}

impl Dataset {
    /// Opens `source` for samples of `seq_len` inputs (`seq_len + 1` tokens).
    pub fn open(source: &DataSource, seq_len: usize) -> Result<Self> {
        check_seq_len(seq_len)?;
        let text = match source {
            DataSource::Synthetic { .. } => None,
            DataSource::TextFile {
                path, tokenizer, ..
            } => Some(read_text(path, tokenizer.as_deref(), 10 * (seq_len + 1))?),
        };
        Ok(Self {
            source: source.clone(),
            seq_len,
            text,
            heldout: false,
        })
    }

    /// Opens a text that no model being evaluated trained on (tokenized with `tokenizer`, a
    /// `tokenizer.json` or GGUF file; `None`: bytes): *all* of it validates, sample `i` being
    /// the `i`-th of its consecutive, non-overlapping windows (wrapping around), so an
    /// evaluation of `n` samples reads `n` different windows while the text has them.
    pub fn open_heldout(path: &Path, tokenizer: Option<&Path>, seq_len: usize) -> Result<Self> {
        check_seq_len(seq_len)?;
        Ok(Self {
            source: DataSource::TextFile {
                path: path.to_path_buf(),
                // Unused: held-out windows are consecutive, not drawn.
                seed: 0,
                tokenizer: tokenizer.map(Path::to_path_buf),
            },
            seq_len,
            text: Some(read_text(path, tokenizer, seq_len + 1)?),
            heldout: true,
        })
    }

    /// Number of distinct validation windows of a held-out text (`None` for other data).
    pub fn heldout_windows(&self) -> Option<usize> {
        let text = self.text.as_ref().filter(|_| self.heldout)?;
        Some((text.len() - 1) / self.seq_len)
    }

    /// The tokens of a text corpus (`None` for the synthetic one).
    pub fn text(&self) -> Option<&[u32]> {
        self.text.as_deref()
    }

    /// Input length of the samples.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Whether samples carry recall queries (only the synthetic corpus does).
    pub fn has_recall(&self) -> bool {
        matches!(self.source, DataSource::Synthetic { .. })
    }

    /// The largest token id any sample can hold (a byte for the synthetic corpus and byte
    /// tokens; the largest id of the tokenized text otherwise).
    pub fn max_token(&self) -> u32 {
        match &self.text {
            Some(text) => text.iter().copied().max().unwrap_or(0),
            None => u8::MAX as u32,
        }
    }

    /// Sample `index` of `split`.
    pub fn sample(&self, split: Split, index: u64) -> Sample {
        match (&self.source, &self.text) {
            (DataSource::Synthetic { seed }, _) => {
                synthetic_sample(*seed, split.stream(index), self.seq_len + 1)
            }
            (DataSource::TextFile { .. }, Some(text)) if self.heldout => {
                let windows = self.heldout_windows().expect("a held-out text");
                let start = (index as usize % windows) * self.seq_len;
                Sample {
                    tokens: text[start..start + self.seq_len + 1].to_vec(),
                    recall: vec![false; self.seq_len],
                }
            }
            (DataSource::TextFile { seed, .. }, Some(text)) => {
                let window = self.seq_len + 1;
                let boundary = text.len() * 9 / 10;
                let (start, end) = match split {
                    Split::Train => (0, boundary),
                    Split::Validation => (boundary, text.len()),
                };
                let mut rng = ChaCha8Rng::seed_from_u64(*seed);
                rng.set_stream(split.stream(index));
                let offset = start + rng.random_range(0..=(end - start - window) as u64) as usize;
                Sample {
                    tokens: text[offset..offset + window].to_vec(),
                    recall: vec![false; self.seq_len],
                }
            }
            (DataSource::TextFile { .. }, None) => unreachable!("text is read on open"),
        }
    }

    /// Samples `first_index..first_index + batch_size` of `split` as a batch.
    pub fn batch(&self, split: Split, first_index: u64, batch_size: usize) -> Batch {
        let samples: Vec<Sample> = (0..batch_size as u64)
            .map(|i| self.sample(split, first_index + i))
            .collect();
        Batch {
            inputs: samples
                .iter()
                .map(|s| s.tokens[..self.seq_len].to_vec())
                .collect(),
            targets: samples.iter().map(|s| s.tokens[1..].to_vec()).collect(),
            recall: samples.into_iter().map(|s| s.recall).collect(),
        }
    }
}

fn check_seq_len(seq_len: usize) -> Result<()> {
    if seq_len < 2 {
        return Err(TrainError::Config(format!(
            "seq_len must be >= 2, got {seq_len}"
        )));
    }
    Ok(())
}

/// The tokens of a text file: its bytes, or its ids under `tokenizer` (a `tokenizer.json` or
/// GGUF file); at least `needed` of them.
fn read_text(path: &Path, tokenizer: Option<&Path>, needed: usize) -> Result<Vec<u32>> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    let text = match std::str::from_utf8(&bytes) {
        Ok(text) => text,
        Err(error) => {
            return Err(TrainError::Data(format!(
                "{} is not UTF-8 text ({error})",
                path.display()
            )))
        }
    };
    let (tokens, unit) = match tokenizer {
        Some(tokenizer) => (
            kv_routing_hf::HfTokenizer::from_file(tokenizer)?.encode_plain(text)?,
            "tokens",
        ),
        None => (bytes.iter().map(|&b| u32::from(b)).collect(), "bytes"),
    };
    // Every split needs at least one full window.
    if tokens.len() < needed {
        return Err(TrainError::Data(format!(
            "{} has {} {unit}; at least {needed} are needed for windows of this length (a training text: 10 windows, 10% of it validates)",
            path.display(),
            tokens.len()
        )));
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heldout_text_validates_in_consecutive_windows_that_wrap_around() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heldout.txt");
        // 2 windows of 4 inputs (+1 target) in 10 bytes; the last byte is never an input.
        std::fs::write(&path, "abcdefghij").unwrap();
        let dataset = Dataset::open_heldout(&path, None, 4).unwrap();
        assert_eq!(dataset.heldout_windows(), Some(2));
        let tokens = |i| dataset.sample(Split::Validation, i).tokens;
        assert_eq!(tokens(0), b"abcde".map(u32::from).to_vec());
        assert_eq!(tokens(1), b"efghi".map(u32::from).to_vec());
        assert_eq!(tokens(2), tokens(0));
        assert!(Dataset::open_heldout(&path, None, 1).is_err());
        let synthetic = Dataset::open(&DataSource::Synthetic { seed: 0 }, 4).unwrap();
        assert_eq!(synthetic.heldout_windows(), None);
    }
}
