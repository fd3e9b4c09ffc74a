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
