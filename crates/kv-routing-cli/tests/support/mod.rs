//! What the command-line tests share: running the built binary.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `kv-routing ARGS`, failing the test (with its stderr) if the command fails.
pub fn run(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_kv-routing"))
        .args(args)
        .output()
        .expect("the binary runs");
    assert!(
        output.status.success(),
        "kv-routing {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs `kv-routing ARGS`, failing the test if the command succeeds; returns its stderr.
#[allow(dead_code)]
pub fn run_failing<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_kv-routing"))
        .args(args)
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "kv-routing succeeded: {stderr}");
    stderr
}

/// A run's metrics.jsonl with the wall-clock speed left out (what an exact resume reproduces).
#[allow(dead_code)]
pub fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let mut entry: serde_json::Value = serde_json::from_str(line).unwrap();
            entry.as_object_mut().unwrap().remove("tokens_per_second");
            entry
        })
        .collect()
}

/// The arguments of `kv-routing train --out OUT --quiet EXTRA...`.
#[allow(dead_code)]
pub fn train_args<'a>(out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["train", "--out", out.to_str().unwrap(), "--quiet"];
    args.extend_from_slice(extra);
    args
}
