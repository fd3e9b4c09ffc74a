//! What a `--checkpoint PATH` names, and the name a model is reported under.
//!
//! Resolving a path only reads: `eval`, `generate`, `export` and `train --init-from` may run
//! while a `train` is saving into the same run, and a reader that renamed (to finish an
//! interrupted commit) could undo or break that save. Finishing an interrupted commit is the
//! writer's job (`train --resume`); readers read its previous state (see
//! [`StagedDir::committed`]).

use std::path::{Path, PathBuf};

use kv_routing_hf::StagedDir;
use kv_routing_train::trainer::checkpoint_dir;

use crate::error::Result;

/// The model directory `path` names: a run directory stands for its checkpoint
/// (`<path>/checkpoint`, also while a save into it is interrupted); anything else (a
/// checkpoint directory, a Hugging Face directory, a GGUF file) for itself.
///
/// # Errors
/// When the run's first save was interrupted before its commit: it has nothing to read.
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf> {
    let inner = checkpoint_dir(path);
    let committed = StagedDir::committed(&inner)?;
    Ok(if committed.exists() {
        inner
    } else {
        path.to_path_buf()
    })
}

/// The name `path` is reported under: a run's directory name (for `<run>/checkpoint` too), a
/// GGUF file's name without its extension.
pub fn run_name(path: &Path) -> String {
    let path = if path.file_name().is_some_and(|n| n == "checkpoint") {
        path.parent().unwrap_or(path)
    } else {
        path
    };
    let name = if path.extension().is_some_and(|e| e == "gguf") {
        path.file_stem()
    } else {
        path.file_name()
    };
    name.map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_named_by_their_directory_and_gguf_files_by_their_stem() {
        assert_eq!(run_name(Path::new("runs/p0.5")), "p0.5");
        assert_eq!(run_name(Path::new("runs/p0.5/checkpoint")), "p0.5");
        assert_eq!(run_name(Path::new("models/smol.Q4_1.gguf")), "smol.Q4_1");
    }

    #[test]
    fn a_run_directory_stands_for_its_checkpoint_even_mid_commit() {
        let root = tempfile::tempdir().unwrap();
        let run = root.path().join("run");
        std::fs::create_dir(&run).unwrap();
        // Not a run: itself.
        assert_eq!(resolve_checkpoint(&run).unwrap(), run);
        // A save interrupted between its renames: still the run's checkpoint, not renamed.
        std::fs::create_dir(run.join("checkpoint.old")).unwrap();
        assert_eq!(resolve_checkpoint(&run).unwrap(), run.join("checkpoint"));
        assert!(!run.join("checkpoint").exists());
        std::fs::rename(run.join("checkpoint.old"), run.join("checkpoint")).unwrap();
        assert_eq!(resolve_checkpoint(&run).unwrap(), run.join("checkpoint"));
    }
}
