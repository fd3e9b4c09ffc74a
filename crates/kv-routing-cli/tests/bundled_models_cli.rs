//! The trained models that ship in examples/models are ordinary checkpoints for the program:
//! `generate` and `eval` take them as they are.

mod support;

use std::path::PathBuf;

use support::{run, run_failing};

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
    // Within the model's context (256 positions), over the budget.
    let stderr = generate(&["--max-new-tokens", "200", "--memory-budget", "100KB"]);
    assert!(
        stderr.contains("over the memory budget of 97.7 KiB (100000 bytes)")
            && stderr.contains("bytes)"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    // A cache no machine holds is refused before anything is allocated: past this model's
    // context, by the context check (see the next test), whatever the budget.
    let stderr = generate(&["--max-new-tokens", "1000000000000000"]);
    assert!(
        stderr.contains("maximum sequence length of 256"),
        "{stderr}"
    );
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

/// `generate` checks the prompt and `--max-new-tokens` against the model's context before its
/// prefill: a request one token too long is refused at once, naming the limit and the largest
/// `--max-new-tokens` that fits, instead of decoding up to the last position and then failing
/// with the tokens thrown away. The longest request that fits runs to its end.
#[test]
fn generate_refuses_a_request_past_the_context_before_generating() {
    let routed = bundled("routed-p0.5");
    let generate = |max_new_tokens: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kv-routing"))
            .args(["generate", "--checkpoint", &routed])
            // 14 byte tokens.
            .args(["--prompt", "the quick fox "])
            .args(["--max-new-tokens", max_new_tokens])
            .output()
            .unwrap()
    };
    // 14 + 243 tokens: the prompt takes positions 0..=13 and the new tokens fed back 14..=255,
    // the model's 256 (the last new token is never fed back). No stop token: all 243 come.
    let fits = generate("243");
    let stderr = String::from_utf8_lossy(&fits.stderr);
    assert!(fits.status.success(), "{stderr}");
    assert!(stderr.contains("14 prompt + 243 new tokens"), "{stderr}");

    let refused = generate("244");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(refused.stdout.is_empty(), "nothing is printed");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    // Before the fix: "sequence 0: position 256 exceeds the maximum sequence length 256",
    // after 242 decode steps.
    assert!(
        stderr.contains("14 prompt tokens")
            && stderr.contains("--max-new-tokens 244")
            && stderr.contains("maximum sequence length of 256")
            && stderr.contains("at most 243"),
        "{stderr}"
    );
}

/// `plan` prints the calibrated plan as its last line, in the form `eval`, `generate` and
/// `export` take; budgets no plan meets are one-line errors.
#[test]
fn plan_prints_a_plan_the_other_commands_take() {
    let routed = bundled("routed-p0.5");
    let text = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("plan.json");
    let plan_args = |budget: &[&'static str]| {
        let mut args = vec![
            "plan".to_string(),
            "--checkpoint".into(),
            routed.clone(),
            "--data".into(),
            text.display().to_string(),
            "--seq-len".into(),
            "64".into(),
            "--sequences".into(),
            "3".into(),
        ];
        args.extend(budget.iter().map(|s| s.to_string()));
        args
    };
    let args = plan_args(&["--retention", "0.5", "--out"]);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.push(report.to_str().unwrap());
    let stdout = String::from_utf8(run(&args).stdout).unwrap();
    let spec = stdout.lines().last().unwrap();
    let layers: Vec<&str> = spec
        .strip_prefix("layers:0,")
        .unwrap_or_else(|| panic!("{stdout}"))
        .split(',')
        .collect();
    assert_eq!(layers.len(), 2, "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["plan"], spec);
    assert_eq!(json["calibration"]["levels"].as_array().unwrap().len(), 3);

    let plans = format!("full,{spec},every:2");
    let output = run(&[
        "eval",
        "--checkpoint",
        &routed,
        "--seq-len",
        "64",
        "--plans",
        &plans,
        "--batches",
        "1",
        "--batch-size",
        "2",
        "--decode-tokens",
        "2",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(spec), "{stdout}");
    let output = run(&[
        "generate",
        "--checkpoint",
        &routed,
        "--plan",
        spec,
        "--prompt",
        "the ",
        "--max-new-tokens",
        "4",
    ]);
    let cached = format!(
        "caching layers [{}]",
        spec["layers:".len()..].replace(',', ", ")
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(&cached),
        "{cached}"
    );

    for (budget, expected) in [
        (&["--retention", "1.5"][..], "budget retention 1.5"),
        (&["--layers", "0"][..], "budget 0 cached layers"),
        (
            &["--kv-bytes-per-token", "99999999"][..],
            "nothing to leave out",
        ),
        (
            &["--layers", "2", "--retention", "0.5"][..],
            "cannot be used with",
        ),
    ] {
        let stderr = run_failing(&plan_args(budget));
        assert!(stderr.contains(expected), "{budget:?}: {stderr}");
    }
}
