//! [`StagedDir`]: a directory written all-or-nothing. Files go to `<dir>.tmp`; `commit` swaps
//! it into place, so an interrupted write never leaves a half-written directory under `dir`.
//! Used for exports here and for training checkpoints.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{HfError, Result};
use crate::gguf::is_gguf_file;
use crate::tokenizer::{HfTokenizer, TOKENIZER_FILE, TOKENIZER_FILES};

/// A directory being written next to its final place.
#[derive(Debug)]
pub struct StagedDir {
    staging: PathBuf,
    target: PathBuf,
}

impl StagedDir {
    /// Starts writing `dir`: creates an empty `<dir>.tmp` (removing a stale one).
    pub fn begin(dir: &Path) -> Result<Self> {
        let staging = sibling(dir, "tmp");
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(|e| HfError::io(&staging, e))?;
        }
        fs::create_dir_all(&staging).map_err(|e| HfError::io(&staging, e))?;
        Ok(Self {
            staging,
            target: dir.to_path_buf(),
        })
    }

    /// Where to write the files.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// Replaces the target directory (if any) with the staged one.
    pub fn commit(self) -> Result<()> {
        let previous = sibling(&self.target, "old");
        if self.target.exists() {
            if previous.exists() {
                fs::remove_dir_all(&previous).map_err(|e| HfError::io(&previous, e))?;
            }
            fs::rename(&self.target, &previous).map_err(|e| HfError::io(&self.target, e))?;
        }
        fs::rename(&self.staging, &self.target).map_err(|e| HfError::io(&self.target, e))?;
        if previous.exists() {
            fs::remove_dir_all(&previous).map_err(|e| HfError::io(&previous, e))?;
        }
        Ok(())
    }
}

/// Copies the tokenizer and generation files ([`TOKENIZER_FILES`]) present in `from` into `to`.
/// When `from` is a GGUF file, writes the `tokenizer.json` built from its metadata instead.
pub fn copy_tokenizer_files(from: &Path, to: &Path) -> Result<()> {
    if is_gguf_file(from) {
        return HfTokenizer::from_file(from)?.save(&to.join(TOKENIZER_FILE));
    }
    for name in TOKENIZER_FILES {
        let source = from.join(name);
        if source.is_file() {
            fs::copy(&source, to.join(name)).map_err(|e| HfError::io(&source, e))?;
        }
    }
    Ok(())
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}
