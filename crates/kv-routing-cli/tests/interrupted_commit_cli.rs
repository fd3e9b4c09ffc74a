//! Readers never rename: `eval`, `generate` and `export` only read the checkpoint they are
//! given, so they cannot race a `train` that is saving into it. A checkpoint whose save (or
//! export) was killed between the two renames of its commit — the previous directory in
//! `<dir>.old`, none at `<dir>` — is read from `<dir>.old` and left exactly as it is; only a
//! writer (`train --resume`, or the next save or export into it) puts it back. A first save
//! killed before its commit left nothing committed, and readers say so.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{run, train_args};

fn bundled(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/models")
        .join(name)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

fn kv_routing(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kv-routing"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn generate_args(checkpoint: &Path) -> Vec<&str> {
    let checkpoint = checkpoint.to_str().unwrap();
    vec![
        "generate",
        "--checkpoint",
        checkpoint,
        "--prompt",
        "the quick fox ",
        "--max-new-tokens",
        "4",
    ]
}

fn eval_args(checkpoint: &Path) -> Vec<&str> {
    let checkpoint = checkpoint.to_str().unwrap();
    vec![
        "eval",
        "--checkpoint",
        checkpoint,
        "--seq-len",
        "16",
        "--plans",
        "full",
        "--batches",
        "1",
        "--batch-size",
        "2",
        "--decode-tokens",
        "1",
    ]
}

/// Every entry of `dir`'s parent whose name starts with `dir`'s, sorted: the directory and
/// its `.old` and `.tmp` siblings as they are.
fn siblings(dir: &Path) -> Vec<String> {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let mut found: Vec<String> = std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|entry| entry.starts_with(&name))
        .collect();
    found.sort();
    found
}

#[test]
fn readers_read_an_interrupted_export_from_its_old_directory_and_leave_it() {
    let root = tempfile::tempdir().unwrap();
    // An export over an earlier one, killed between its renames.
    let model = root.path().join("model");
    copy_dir(&bundled("routed-p0.5"), &root.path().join("model.old"));
    let before = siblings(&model);
    assert_eq!(before, ["model.old"]);

    let output = run(&generate_args(&model));
    assert!(
        String::from_utf8_lossy(&output.stdout).starts_with("the quick fox "),
        "{output:?}"
    );
    assert_eq!(siblings(&model), before, "generate renamed the checkpoint");
    run(&eval_args(&model));
    assert_eq!(siblings(&model), before, "eval renamed the checkpoint");
    let out = root.path().join("export");
    run(&[
        "export",
        "--checkpoint",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(siblings(&model), before, "export renamed its input");
    assert!(out.join("config.json").is_file());
}

#[test]
fn readers_leave_an_interrupted_training_save_to_the_writer() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("run");
    let shape = [
        "--steps",
        "2",
        "--stop-at",
        "1",
        "--layers",
        "1",
        "--d-model",
        "32",
        "--seq-len",
        "16",
        "--batch-size",
        "2",
        "--warmup",
        "0",
        "--eval-batches",
        "1",
    ];
    run(&train_args(&out, &shape));
    // A save killed between its renames: the previous checkpoint moved aside, the new one
    // (complete) still staged.
    let checkpoint = out.join("checkpoint");
    std::fs::rename(&checkpoint, out.join("checkpoint.old")).unwrap();
    copy_dir(&out.join("checkpoint.old"), &out.join("checkpoint.tmp"));
    let before = siblings(&checkpoint);
    assert_eq!(before, ["checkpoint.old", "checkpoint.tmp"]);

    run(&generate_args(&out));
    assert_eq!(
        siblings(&checkpoint),
        before,
        "generate renamed the checkpoint"
    );
    run(&eval_args(&out));
    assert_eq!(siblings(&checkpoint), before, "eval renamed the checkpoint");
    // A fresh run into it would replace the interrupted run's checkpoint.
    let fresh = kv_routing(&train_args(&out, &shape));
    assert!(!fresh.status.success());
    assert!(
        String::from_utf8_lossy(&fresh.stderr).contains("pass --resume"),
        "{fresh:?}"
    );
    assert_eq!(siblings(&checkpoint), before);

    // The writer finishes the interrupted commit (back to the previous checkpoint) and goes on.
    run(&train_args(&out, &["--resume"]));
    assert_eq!(siblings(&checkpoint), ["checkpoint"]);
    assert_eq!(support::metrics(&out).len(), 2);
}

#[test]
fn a_first_save_killed_before_its_commit_has_nothing_to_read() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("run");
    // Only the staging directory of the first save, unfinished.
    std::fs::create_dir_all(out.join("checkpoint.tmp")).unwrap();
    let output = kv_routing(&generate_args(&out));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("interrupted") && stderr.contains("checkpoint.tmp"),
        "{stderr}"
    );
    assert_eq!(siblings(&out.join("checkpoint")), ["checkpoint.tmp"]);
}
