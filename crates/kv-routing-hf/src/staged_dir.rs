//! [`StagedDir`]: a directory written all-or-nothing. Files go to `<dir>.tmp`; `commit` swaps
//! it into place, so an interrupted write never leaves a half-written directory under `dir`.
//! Used for exports here and for training checkpoints.
//!
//! # Crash safety
//! A process killed at any point leaves `dir` holding either the previous directory or the new
//! one, complete, or (between the two renames of a commit) neither, with the previous one in
//! `<dir>.old`: [`StagedDir::recover`] (run by [`StagedDir::begin`] and by the loaders of
//! training checkpoints) puts it back. Before the renames every staged file and the staging
//! directory are flushed to disk (`fsync`), and the parent directory after them, so a power
//! loss cannot leave a renamed directory whose files were never written.
//! `crates/kv-routing-cli/tests/crash_safety.rs` kills saving processes at random points.

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
    /// Starts writing `dir`: creates an empty `<dir>.tmp` (removing a stale one), after
    /// recovering from a commit that was interrupted ([`StagedDir::recover`]).
    pub fn begin(dir: &Path) -> Result<Self> {
        Self::recover(dir)?;
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

    /// Finishes an interrupted commit: when `dir` is missing but `<dir>.old` exists (a process
    /// died between moving the previous directory aside and moving the new one in), the
    /// previous directory is put back. Returns whether it did.
    pub fn recover(dir: &Path) -> Result<bool> {
        let previous = sibling(dir, "old");
        if dir.exists() || !previous.is_dir() {
            return Ok(false);
        }
        fs::rename(&previous, dir).map_err(|e| HfError::io(dir, e))?;
        sync_parent(dir)?;
        Ok(true)
    }

    /// Replaces the target directory (if any) with the staged one.
    pub fn commit(self) -> Result<()> {
        sync_tree(&self.staging)?;
        let previous = sibling(&self.target, "old");
        if self.target.exists() {
            if previous.exists() {
                fs::remove_dir_all(&previous).map_err(|e| HfError::io(&previous, e))?;
            }
            fs::rename(&self.target, &previous).map_err(|e| HfError::io(&self.target, e))?;
        }
        fs::rename(&self.staging, &self.target).map_err(|e| HfError::io(&self.target, e))?;
        sync_parent(&self.target)?;
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

/// Flushes every file under `dir`, then `dir` itself, to disk.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| HfError::io(dir, e))? {
        let path = entry.map_err(|e| HfError::io(dir, e))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            sync_path(&path)?;
        }
    }
    sync_path(dir)
}

/// Flushes the directory holding `path` (where a rename is recorded).
fn sync_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_path(parent),
        _ => sync_path(Path::new(".")),
    }
}

fn sync_path(path: &Path) -> Result<()> {
    let file = fs::File::open(path).map_err(|e| HfError::io(path, e))?;
    match file.sync_all() {
        Ok(()) => Ok(()),
        // Some platforms and file systems cannot sync a directory handle; the rename is still
        // atomic there, only its durability across a power loss is not promised.
        Err(_) if path.is_dir() => Ok(()),
        Err(e) => Err(HfError::io(path, e)),
    }
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}
