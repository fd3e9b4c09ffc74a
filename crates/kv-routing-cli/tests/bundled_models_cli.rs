//! The trained models that ship in examples/models are ordinary checkpoints for the program:
//! `generate` and `eval` take them as they are.

mod support;

use std::path::PathBuf;

use support::run;

fn bundled(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/models")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn generate_and_eval_take_the_bundled_models() {
    let routed = bundled("routed-p0.5");
    let output = run(&[
        "generate",
        "--checkpoint",
        &routed,
        "--plan",
        "every:3",
        "--prompt",
        "the quick fox ",
        "--max-new-tokens",
        "12",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("the quick fox "), "{stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("caching layers [0, 3]"), "{stderr}");

    let output = run(&[
        "eval",
        "--checkpoint",
        &routed,
        "--checkpoint",
        &bundled("baseline-p0"),
        "--seq-len",
        "128",
        "--plans",
        "full,every:2",
        "--batches",
        "1",
        "--batch-size",
        "4",
        "--decode-tokens",
        "2",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("routed-p0.5") || l.starts_with("baseline-p0"))
        .collect();
    assert_eq!(rows.len(), 4, "{stdout}");
}

/// A generation or training batch over `--memory-budget` fails before allocating, with a
/// one-line error that gives the bytes it needs; the default budget (the memory available)
/// refuses a cache no machine holds instead of aborting.
#[test]
fn memory_budgets_refuse_with_the_bytes_needed() {
    let routed = bundled("routed-p0.5");
    let fail = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_kv-routing"))
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let generate = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--checkpoint",
            &routed,
            "--prompt",
            "the quick fox ",
        ];
        args.extend_from_slice(extra);
        fail(&args)
    };
    let stderr = generate(&["--max-new-tokens", "100000", "--memory-budget", "1MB"]);
    assert!(
        stderr.contains("over the memory budget of 976.6 KiB (1000000 bytes)")
            && stderr.contains("bytes)"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let stderr = generate(&["--max-new-tokens", "1000000000000000"]);
    assert!(stderr.contains("over the memory budget"), "{stderr}");
    let stderr = generate(&["--memory-budget", "lots"]);
    assert!(stderr.contains("expected a size such as 8GiB"), "{stderr}");

    let out = tempfile::tempdir().unwrap();
    let stderr = fail(&[
        "train",
        "--out",
        out.path().to_str().unwrap(),
        "--quiet",
        "--steps",
        "1",
        "--batch-size",
        "100000",
        "--memory-budget",
        "64MiB",
    ]);
    assert!(
        stderr.contains("a training step of 100000 sequences")
            && stderr.contains("over the memory budget of 64.0 MiB"),
        "{stderr}"
    );
}
