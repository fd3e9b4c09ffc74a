//! A GGUF file works wherever a checkpoint directory does: generate from it, fine-tune from it
//! with routing, evaluate the run on held-out text with passkey prompts, export the run in
//! Hugging Face layout (with a `tokenizer.json` built from the GGUF metadata) and generate
//! from the export. The file is written by the same support code as kv-routing-hf's GGUF
//! tests (llama.cpp layout, Q8_0 matrices, a byte-level tokenizer of single letters).

#[path = "../../kv-routing-hf/tests/support/checkpoint_builder.rs"]
#[allow(dead_code)]
mod checkpoint_builder;
#[path = "../../kv-routing-hf/tests/support/gguf_writer.rs"]
#[allow(dead_code)]
mod gguf_writer;
mod support;

use std::path::Path;
use std::process::Command;

use kv_routing_hf::gguf::GgmlType;
use support::{run, run_failing};

#[test]
fn generate_fine_tune_eval_and_export_from_a_gguf_file() {
    let root = tempfile::tempdir().unwrap();
    let spec = checkpoint_builder::Spec {
        intermediate: 64,
        ..checkpoint_builder::Spec::llama()
    };
    let gguf = root.path().join("tiny-llama.Q8_0.gguf");
    let (writer, _) = gguf_writer::gguf_model(&spec, GgmlType::Q8_0, 3);
    std::fs::write(&gguf, writer.to_bytes()).unwrap();
    // The vocabulary is single letters: text without spaces tokenizes fully.
    let corpus = root.path().join("corpus.txt");
    std::fs::write(&corpus, "abcdefghijklmnopqrstuvwxyz".repeat(20)).unwrap();
    let path = |p: &Path| p.to_str().unwrap().to_string();

    let output = run(&[
        "generate",
        "--checkpoint",
        &path(&gguf),
        "--prompt",
        "abc",
        "--max-new-tokens",
        "4",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.starts_with("abc"), "{stdout}");

    let runs = root.path().join("run");
    let output = run(&[
        "train",
        "--init-from",
        &path(&gguf),
        "--data",
        &path(&corpus),
        "--p",
        "0.5",
        "--steps",
        "2",
        "--seq-len",
        "16",
        "--batch-size",
        "2",
        "--eval-batches",
        "1",
        "--quiet",
        "--out",
        &path(&runs),
    ]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("trained 2 steps"));
    // The run carries the GGUF's tokenizer as a tokenizer.json.
    assert!(runs.join("checkpoint").join("tokenizer.json").is_file());

    let output = run(&[
        "eval",
        "--checkpoint",
        &path(&gguf),
        "--checkpoint",
        &path(&runs),
        "--heldout",
        &path(&corpus),
        "--seq-len",
        "16",
        "--plans",
        "full,every:2",
        "--batches",
        "1",
        "--batch-size",
        "2",
        "--decode-tokens",
        "2",
    ]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("tiny-llama.Q8_0") && table.contains("every:2"),
        "{table}"
    );
    // Passkey prompts longer than the model's context (64 here) fail up front, saying so.
    let output = Command::new(env!("CARGO_BIN_EXE_kv-routing"))
        .args([
            "eval",
            "--checkpoint",
            &path(&gguf),
            "--seq-len",
            "16",
            "--batches",
            "1",
            "--passkey",
            "2",
            "--passkey-filler",
            "1",
        ])
        .output()
        .unwrap();
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && error.contains("context of 64"),
        "{error}"
    );

    let exported = root.path().join("exported");
    run(&[
        "export",
        "--checkpoint",
        &path(&runs),
        "--plan",
        "every:2",
        "--out",
        &path(&exported),
    ]);
    assert!(exported.join("tokenizer.json").is_file());
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(exported.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["model_type"], "llama");
    assert_eq!(config["kv_routing"]["routing_p"], 0.5);
    let output = run(&[
        "generate",
        "--checkpoint",
        &path(&exported),
        "--prompt",
        "abc",
        "--max-new-tokens",
        "4",
    ]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("stored with the model"));
}

#[test]
fn a_damaged_gguf_file_is_a_one_line_error() {
    let root = tempfile::tempdir().unwrap();
    let spec = checkpoint_builder::Spec {
        intermediate: 64,
        ..checkpoint_builder::Spec::llama()
    };
    let bytes = gguf_writer::gguf_model(&spec, GgmlType::Q4_0, 1)
        .0
        .to_bytes();
    let gguf = root.path().join("cut.gguf");
    std::fs::write(&gguf, &bytes[..bytes.len() / 2]).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_kv-routing"))
        .args([
            "generate",
            "--checkpoint",
            gguf.to_str().unwrap(),
            "--prompt",
            "abc",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("past the end of the file"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

/// `generate` with a plan per prompt and an int8 cache: one batch in which each continuation is
/// the one its prompt gets alone under its plan, each sequence reporting its own bytes; a plan
/// count that fits neither rule is refused; `eval --kv-dtype int8` labels its results.
#[test]
fn a_plan_per_prompt_and_an_int8_cache_from_the_command_line() {
    let root = tempfile::tempdir().unwrap();
    let gguf = root.path().join("tiny-llama.Q8_0.gguf");
    let spec = checkpoint_builder::Spec {
        intermediate: 64,
        ..checkpoint_builder::Spec::llama()
    };
    let (writer, _) = gguf_writer::gguf_model(&spec, GgmlType::Q8_0, 5);
    std::fs::write(&gguf, writer.to_bytes()).unwrap();
    let gguf = gguf.to_str().unwrap();
    let generate = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--checkpoint",
            gguf,
            "--max-new-tokens",
            "5",
            "--kv-dtype",
            "int8",
        ];
        args.extend_from_slice(extra);
        String::from_utf8_lossy(&run(&args).stdout).into_owned()
    };
    let batch = generate(&[
        "--prompt", "abc", "--plan", "full", "--prompt", "hgfedcb", "--plan", "every:2",
    ]);
    let sections: Vec<&str> = batch.split("--- prompt ").skip(1).collect();
    assert_eq!(sections.len(), 2, "{batch}");
    assert!(sections[0].starts_with("0, plan full"), "{batch}");
    assert!(sections[1].starts_with("1, plan every:2"), "{batch}");
    let continuation = |section: &str| section.lines().nth(1).unwrap().to_string();
    let alone_full = generate(&["--prompt", "abc", "--plan", "full"]);
    let alone_shared = generate(&["--prompt", "hgfedcb", "--plan", "every:2"]);
    assert_eq!(continuation(sections[0]), alone_full.trim_end());
    assert_eq!(continuation(sections[1]), alone_shared.trim_end());
    let bytes = |section: &str| -> usize {
        section
            .split(", ")
            .last()
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    // Same slots, half the layers.
    assert_eq!(bytes(sections[0]), 2 * bytes(sections[1]), "{batch}");

    let refused = run_failing(&[
        "generate",
        "--checkpoint",
        gguf,
        "--prompt",
        "a",
        "--prompt",
        "b",
        "--prompt",
        "c",
        "--plan",
        "full",
        "--plan",
        "every:2",
    ]);
    assert!(refused.contains("2 plans for 3 prompts"), "{refused}");
    let refused = run_failing(&[
        "generate",
        "--checkpoint",
        gguf,
        "--prompt",
        "a",
        "--kv-dtype",
        "int4",
    ]);
    assert!(refused.contains("int4"), "{refused}");

    let corpus = root.path().join("heldout.txt");
    std::fs::write(&corpus, "abcdefghijklmnopqrstuvwxyz".repeat(10)).unwrap();
    let output = run(&[
        "eval",
        "--checkpoint",
        gguf,
        "--heldout",
        corpus.to_str().unwrap(),
        "--seq-len",
        "16",
        "--batches",
        "1",
        "--batch-size",
        "2",
        "--plans",
        "full,every:2",
        "--decode-tokens",
        "2",
        "--kv-dtype",
        "int8",
    ]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("every:2"), "{table}");
}

#[test]
fn block_weights_from_the_command_line() {
    let root = tempfile::tempdir().unwrap();
    let spec = checkpoint_builder::Spec {
        intermediate: 64,
        ..checkpoint_builder::Spec::llama()
    };
    let gguf = root.path().join("tiny-llama.Q4_1.gguf");
    let (writer, _) = gguf_writer::gguf_model(&spec, GgmlType::Q4_1, 5);
    std::fs::write(&gguf, writer.to_bytes()).unwrap();
    let gguf = gguf.to_str().unwrap();
    let generate = |weights: &str| {
        let output = run(&[
            "generate",
            "--checkpoint",
            gguf,
            "--prompt",
            "abc",
            "--max-new-tokens",
            "8",
            "--weights",
            weights,
        ]);
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap()
            .to_string()
    };
    // The file's blocks multiplied in place give the dequantized path's greedy text.
    let (float, stored) = (generate("float"), generate("as-stored"));
    assert!(float.starts_with("abc") && float.len() > 3, "{float}");
    assert_eq!(float, stored);
    // Every matrix quantized at load, under a sharing plan: it runs and reports.
    let corpus = root.path().join("corpus.txt");
    std::fs::write(&corpus, "abcdefghijklmnopqrstuvwxyz".repeat(20)).unwrap();
    // Where this build and CPU have no integer products, a note says the option did nothing.
    let runs_int8 =
        kv_routing::BlockWeight::int8_prompt_products_run_on::<kv_routing_backend::Backend>();
    for weights in ["q8_0", "q4_1"] {
        let output = run(&[
            "eval",
            "--checkpoint",
            gguf,
            "--heldout",
            corpus.to_str().unwrap(),
            "--seq-len",
            "16",
            "--plans",
            "full,every:2",
            "--batches",
            "1",
            "--batch-size",
            "2",
            "--decode-tokens",
            "2",
            "--weights",
            weights,
            // llama.cpp's arithmetic for the 16-row windows (integer products on AVX2 CPUs).
            "--int8-prompts",
        ]);
        assert!(String::from_utf8_lossy(&output.stdout).contains("every:2"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            stderr.contains("--int8-prompts changes nothing here"),
            !runs_int8,
            "{weights}: {stderr}"
        );
    }
    // `generate` with `extra` options, which must fail: its stderr.
    let generate_failing = |extra: &[&str]| {
        let mut argv = vec!["generate", "--checkpoint", gguf, "--prompt", "abc"];
        argv.extend_from_slice(extra);
        run_failing(&argv)
    };
    // It multiplies blocks: with float weights it is refused, not ignored.
    let stderr = generate_failing(&["--int8-prompts"]);
    assert!(
        stderr.contains("--int8-prompts") && stderr.contains("as-stored"),
        "{stderr}"
    );
    let stderr = generate_failing(&["--weights", "q5_k"]);
    assert!(stderr.contains("unknown weight storage"), "{stderr}");
}
