//! What the command-line tests share: running the built binary.

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
