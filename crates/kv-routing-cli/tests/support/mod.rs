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

/// Asserts that two logs hold the same steps with figures equal up to float noise (two devices
/// or nodes sum the gradient in another order than one).
#[allow(dead_code)]
pub fn assert_close(a: &[serde_json::Value], b: &[serde_json::Value]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x["step"], y["step"]);
        assert_eq!(x["learning_rate"], y["learning_rate"]);
        for key in ["train_loss", "grad_norm", "val_loss"] {
            match (x[key].as_f64(), y[key].as_f64()) {
                (Some(u), Some(v)) => assert!(
                    (u - v).abs() <= 1e-4 * u.abs().max(1.0),
                    "step {}: {key} {u} vs {v}",
                    x["step"]
                ),
                (u, v) => assert_eq!(u, v, "step {}: {key}", x["step"]),
            }
        }
    }
}
