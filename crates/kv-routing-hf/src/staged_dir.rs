//! [`StagedDir`]: a directory written all-or-nothing. Files go to `<dir>.tmp`; `commit` swaps
//! it into place, so an interrupted write never leaves a half-written directory under `dir`.
//! Used for exports here and for training checkpoints.
//!
//! # Crash safety
//! A process killed at any point leaves `dir` holding either the previous directory or the new
//! one, complete, or (between the two renames of a commit) neither, with the previous one in
//! `<dir>.old`. Before the renames every staged file and the staging directory are flushed to
//! disk (`fsync`), and the parent directory after them, so a power loss cannot leave a renamed
//! directory whose files were never written. `crates/kv-routing-cli/tests/crash_safety.rs`
//! kills saving processes at random points.
//!
//! # Writers and readers
//! Only a writer finishes an interrupted commit: [`StagedDir::recover`] (run by
//! [`StagedDir::begin`], and by kv-routing-train before it resumes a run) puts `<dir>.old`
//! back. A reader never renames — it could race a writer committing into the same directory
//! at that moment, and undo or break its commit — it reads where [`StagedDir::committed`]
//! points: `dir`, or `<dir>.old` while a commit is interrupted, which is what `recover` would
//! restore. A reader that overlaps a commit can still find a file gone from under it (the
//! directory it reads is renamed away); it then fails with that file's error, and a retry
//! reads the new state.

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

    /// Where a reader finds the committed contents of `dir`, changing nothing (see the module
    /// docs): `dir` when it exists; `<dir>.old` when `dir` is missing because a commit was
    /// interrupted between its two renames (the previous contents, which a writer's
    /// [`StagedDir::recover`] would put back); else `dir`, for the caller to report missing.
    ///
    /// # Errors
    /// [`HfError::Uncommitted`] when only `<dir>.tmp` is there: the first write into `dir` was
    /// interrupted before its commit, so nothing was ever committed.
    pub fn committed(dir: &Path) -> Result<PathBuf> {
        let previous = sibling(dir, "old");
        let staging = sibling(dir, "tmp");
        if dir.exists() {
            Ok(dir.to_path_buf())
        } else if previous.is_dir() {
            Ok(previous)
        } else if staging.exists() {
            Err(HfError::Uncommitted {
                dir: dir.to_path_buf(),
                staging,
            })
        } else {
            Ok(dir.to_path_buf())
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name in `root`, sorted.
    fn names(root: &Path) -> Vec<String> {
        let mut found: Vec<String> = fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        found.sort();
        found
    }

    #[test]
    fn readers_find_the_committed_state_without_renaming() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("model");
        // Nothing there: the path itself, for the caller to report.
        assert_eq!(StagedDir::committed(&dir).unwrap(), dir);
        // A first write killed before its commit: nothing committed.
        fs::create_dir(sibling(&dir, "tmp")).unwrap();
        let error = StagedDir::committed(&dir).unwrap_err();
        assert!(matches!(error, HfError::Uncommitted { .. }), "{error}");
        assert!(error.to_string().contains("model.tmp"), "{error}");
        // A commit killed between its renames: the previous directory, left where it is.
        fs::create_dir(sibling(&dir, "old")).unwrap();
        assert_eq!(StagedDir::committed(&dir).unwrap(), sibling(&dir, "old"));
        assert_eq!(names(root.path()), ["model.old", "model.tmp"]);
        // The writer puts it back; from then on readers read `dir`.
        assert!(StagedDir::recover(&dir).unwrap());
        assert_eq!(StagedDir::committed(&dir).unwrap(), dir);
        assert_eq!(names(root.path()), ["model", "model.tmp"]);
    }
}
