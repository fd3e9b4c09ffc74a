//! The command-line program with a Hugging Face checkpoint end to end, offline: a small random
//! Llama checkpoint with a word-level `tokenizer.json` is fine-tuned with routing, exported with
//! a serving plan, reloaded for generation (text in, text out) and evaluation.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::json;
use support::{run, run_failing};

mod support;

const WORDS: [&str; 15] = [
    "[UNK]", "<s>", "</s>", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "to", "park",
    "and", "slept",
];
const LAYERS: usize = 4;
const HIDDEN: usize = 32;

/// A random 4-layer Llama (GQA) checkpoint whose vocabulary is `WORDS`, plus its tokenizer.
fn write_checkpoint(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let vocab = WORDS.len();
    let config = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
        "hidden_size": HIDDEN, "intermediate_size": 64, "num_hidden_layers": LAYERS,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false,
        "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut shapes = vec![("model.embed_tokens.weight".to_string(), vec![vocab, HIDDEN])];
    for l in 0..LAYERS {
        for (name, shape) in [
            ("input_layernorm.weight", vec![HIDDEN]),
            ("self_attn.q_proj.weight", vec![32, HIDDEN]),
            ("self_attn.k_proj.weight", vec![16, HIDDEN]),
            ("self_attn.v_proj.weight", vec![16, HIDDEN]),
            ("self_attn.o_proj.weight", vec![HIDDEN, 32]),
            ("post_attention_layernorm.weight", vec![HIDDEN]),
            ("mlp.gate_proj.weight", vec![64, HIDDEN]),
            ("mlp.up_proj.weight", vec![64, HIDDEN]),
            ("mlp.down_proj.weight", vec![HIDDEN, 64]),
        ] {
            shapes.push((format!("model.layers.{l}.{name}"), shape));
        }
    }
    shapes.push(("model.norm.weight".into(), vec![HIDDEN]));
    shapes.push(("lm_head.weight".into(), vec![vocab, HIDDEN]));
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = shapes
        .into_iter()
        .map(|(name, shape)| {
            let norm = name.contains("norm");
            let data = (0..shape.iter().product::<usize>())
                .flat_map(|_| {
                    let v: f32 = rng.random_range(-0.1..0.1);
                    (if norm { 1.0 + v } else { v }).to_le_bytes()
                })
                .collect();
            (name, shape, data)
        })
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let vocab: HashMap<&str, usize> = WORDS.iter().enumerate().map(|(i, w)| (*w, i)).collect();
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
}

#[test]
fn fine_tune_export_generate_and_eval_a_hugging_face_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("llama");
    write_checkpoint(&base);
    let corpus = root.path().join("corpus.txt");
    let text = "the cat sat on the mat and the dog ran to the park and slept . ".repeat(40);
    std::fs::write(&corpus, text).unwrap();
    let path = |p: &Path| p.to_str().unwrap().to_string();

    // The pretrained checkpoint generates as is, with its tokenizer.
    let output = run(&[
        "generate",
        "--checkpoint",
        &path(&base),
        "--prompt",
        "the cat",
        "--max-new-tokens",
        "3",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("tokenizer.json tokens, plan full"),
        "{stderr}"
    );

    let runs = root.path().join("run");
    let argv = fine_tune_args(&base, &corpus, &runs, &["--p", "0.5", "--steps", "3"]);
    run(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    let checkpoint = runs.join("checkpoint");
    assert!(
        checkpoint.join("tokenizer.json").is_file(),
        "the run keeps the tokenizer"
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(checkpoint.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(saved["model"]["n_layers"], LAYERS);
    assert!(
        saved["data"]["text_file"]["tokenizer"].is_string(),
        "the corpus was tokenized: {saved}"
    );

    let exported = root.path().join("exported");
    let output = run(&[
        "export",
        "--checkpoint",
        &path(&runs),
        "--plan",
        "every:2",
        "--dtype",
        "bf16",
        "--out",
        &path(&exported),
    ]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("LlamaForCausalLM"));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(exported.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["kv_routing"]["routing_p"], 0.5);
    assert_eq!(config["kv_routing"]["routed_steps"], 3);
    assert_eq!(config["kv_routing"]["serve_cached_layers"], json!([0, 2]));
    assert_eq!(config["torch_dtype"], "bfloat16");
    assert_eq!(config["eos_token_id"], 2);
    assert!(exported.join("tokenizer.json").is_file());

    // Served with the stored plan by default: text in, text out.
    let output = run(&[
        "generate",
        "--checkpoint",
        &path(&exported),
        "--prompt",
        "the dog",
        "--max-new-tokens",
        "4",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("generate: {stdout}{stderr}");
    assert!(stdout.starts_with("the dog"), "{stdout}");
    let generated = stdout.trim_start_matches("the dog").trim();
    assert!(
        generated.split_whitespace().all(|w| WORDS.contains(&w)),
        "generated text is made of vocabulary words: {stdout}"
    );
    assert!(
        stderr.contains("plan stored with the model caching layers [0, 2]"),
        "{stderr}"
    );

    let output = run(&[
        "eval",
        "--checkpoint",
        &path(&exported),
        "--data",
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
    eprintln!("eval:\n{table}");
    assert!(table.contains("every:2"), "{table}");
}

#[test]
fn a_damaged_checkpoint_is_a_one_line_error() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("llama");
    write_checkpoint(&base);
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("config.json")).unwrap()).unwrap();
    config["num_key_value_heads"] = json!(4);
    std::fs::write(base.join("config.json"), config.to_string()).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_kv-routing"))
        .args([
            "generate",
            "--checkpoint",
            base.to_str().unwrap(),
            "--prompt",
            "the",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "model.layers.0.self_attn.k_proj.weight` has shape [16, 32], the config needs [32, 32]"
        ),
        "{stderr}"
    );
}

/// The retrofit recipe from the command line: distillation from the --init-from checkpoint with
/// plan-drawn routes is saved in the run's config (the teacher by absolute path), the run says
/// how to resume, and settings it cannot honour are one-line errors before any training.
#[test]
fn a_distilled_plan_drawn_retrofit_is_configured_by_flags() {
    let root = tempfile::tempdir().unwrap();
    let (base, corpus) = retrofit_fixture(root.path());
    let runs = root.path().join("run");
    let args = |extra: &[&'static str]| -> Vec<String> {
        let mut settings = vec!["--p", "0.75", "--steps", "2"];
        settings.extend(extra);
        fine_tune_args(&base, &corpus, &runs, &settings)
    };
    let fails = |extra: &[&'static str], message: &str| {
        let stderr = run_failing(&args(extra));
        assert!(stderr.contains(message), "{extra:?}: {stderr}");
        assert!(!runs.join("checkpoint").exists(), "{extra:?} trained");
    };
    fails(&["--route-draw", "every:1"], "max_k >= 2");
    fails(&["--route-draw", "plans:1.5"], "must be in (0, 1), got 1.5");
    fails(
        &["--distill", "--distill-temperature", "0"],
        "temperature must be positive",
    );
    fails(
        &["--distill", "--distill-ce-weight", "2"],
        "must be in [0, 1]",
    );
    fails(
        &["--distill", "--distill-full-weight", "nan"],
        "full-plan weight of distillation must be finite and >= 0",
    );
    fails(
        &["--distill", "--distill-hidden-weight", "inf"],
        "hidden-state weight of distillation must be finite and >= 0",
    );
    fails(
        &["--distill", "--distill-focus", "5"],
        "position focus of distillation must be in [0, 4]",
    );

    let argv = args(&[
        "--route-draw",
        "every:3",
        "--distill",
        "--distill-ce-weight",
        "0.5",
        "--distill-full-weight",
        "0.25",
        "--distill-hidden-weight",
        "3",
        "--distill-focus",
        "1.5",
    ]);
    run(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(runs.join("checkpoint/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        saved["route_draw"],
        json!({"kind": "every_kth", "max_k": 3})
    );
    assert_eq!(saved["distill"]["temperature"], 2.0);
    assert_eq!(saved["distill"]["ce_weight"], 0.5);
    assert_eq!(saved["distill"]["full_plan_weight"], 0.25);
    assert_eq!(saved["distill"]["hidden_weight"], 3.0);
    assert_eq!(saved["distill"]["position_focus"], 1.5);
    let teacher = std::path::absolute(&base).unwrap();
    assert_eq!(saved["distill"]["teacher"], teacher.to_str().unwrap());
    let note = std::fs::read_to_string(runs.join("RESUME.md")).unwrap();
    assert!(note.contains("--resume --out"), "{note}");
    assert!(note.contains("position focus 1.5"), "{note}");

    // Without a model to distill from, --distill is refused.
    let output = Command::new(env!("CARGO_BIN_EXE_kv-routing"))
        .args(["train", "--distill", "--steps", "1", "--quiet", "--out"])
        .arg(root.path().join("fresh"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("give --init-from or --teacher"),
        "{stderr}"
    );
}

/// `--sharing-adapter` from the command line: a run that trains only adapters saves them in its
/// configuration; `eval` reads them (the full plan scores the starting model's loss exactly,
/// every:2 another); `export` to the Hugging Face layout refuses them; a rank of 0, an alpha
/// without a rank and a LoRA+ ratio without adapters or out of range are refused before anything
/// trains.
#[test]
fn sharing_adapters_from_the_command_line() {
    let root = tempfile::tempdir().unwrap();
    let (base, corpus) = retrofit_fixture(root.path());
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let runs = root.path().join("run");
    let train = |extra: &[&str]| -> Vec<String> {
        let mut settings = vec![
            "--p",
            "1",
            "--route-draw",
            "every:2",
            "--steps",
            "3",
            "--lr",
            "1e-2",
        ];
        settings.extend(extra);
        fine_tune_args(&base, &corpus, &runs, &settings)
    };
    for (extra, message) in [
        (&["--sharing-adapter", "0"][..], "rank must be >= 1"),
        (&["--sharing-adapter-alpha", "4"][..], "--sharing-adapter"),
        (
            &["--sharing-adapter", "2", "--sharing-adapter-alpha=-1"][..],
            "alpha must be positive",
        ),
        (
            &["--adapter-up-lr-ratio", "16"][..],
            "the model has no sharing adapters",
        ),
        (
            &["--sharing-adapter", "2", "--adapter-up-lr-ratio", "0"][..],
            "adapter_up_lr_ratio must be in (0, 256]",
        ),
    ] {
        let stderr = run_failing(&train(extra));
        assert!(stderr.contains(message), "{extra:?}: {stderr}");
        assert!(!runs.join("checkpoint").exists(), "{extra:?} trained");
    }
    let argv = train(&[
        "--sharing-adapter",
        "2",
        "--sharing-adapter-alpha",
        "4",
        "--adapter-up-lr-ratio",
        "16",
    ]);
    run(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(runs.join("checkpoint/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["model"]["sharing_adapter"]["rank"], 2);
    assert_eq!(saved["model"]["sharing_adapter"]["alpha"], 4.0);
    assert_eq!(saved["adapter_up_lr_ratio"], 16.0);
    let note = std::fs::read_to_string(runs.join("RESUME.md")).unwrap();
    assert!(note.contains("up matrices at 16 x the rate"), "{note}");

    let loss = |checkpoint: &Path, plan: &str| -> f64 {
        let output = run(&[
            "eval",
            "--checkpoint",
            &path(checkpoint),
            "--heldout",
            &path(&corpus),
            "--seq-len",
            "16",
            "--batches",
            "1",
            "--batch-size",
            "2",
            "--plans",
            plan,
            "--decode-tokens",
            "0",
            "--out",
            &path(&root.path().join(format!("eval-{plan}"))),
        ]);
        let report: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root.path().join(format!("eval-{plan}/eval.json"))).unwrap(),
        )
        .unwrap();
        assert!(output.status.success());
        report[0]["plans"][0]["val_loss"].as_f64().unwrap()
    };
    assert_eq!(loss(&runs, "full"), loss(&base, "full"));
    assert_ne!(loss(&runs, "every:2"), loss(&base, "every:2"));

    let stderr = run_failing(&[
        "export".to_string(),
        "--checkpoint".into(),
        path(&runs),
        "--out".into(),
        path(&root.path().join("exported")),
    ]);
    assert!(stderr.contains("sharing adapters"), "{stderr}");
}

/// `--recipe sharing-adapters` sets the retrofit flags (adapters, every:2 on every step,
/// distillation with hidden states, its rate and schedule); flags given override it; it needs a
/// starting model and cannot resume; an adapter alpha needs adapters.
#[test]
fn a_recipe_sets_the_retrofit_flags_and_given_flags_override_it() {
    let root = tempfile::tempdir().unwrap();
    let (base, corpus) = retrofit_fixture(root.path());
    let runs = root.path().join("run");
    // `fine_tune_args` gives --seq-len 16, --batch-size 2 and --warmup 1: overrides.
    let argv = fine_tune_args(
        &base,
        &corpus,
        &runs,
        &[
            "--recipe",
            "sharing-adapters",
            "--steps",
            "2",
            "--sharing-adapter",
            "2",
        ],
    );
    run(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(runs.join("checkpoint/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["p"], 1.0);
    assert_eq!(saved["route_draw"]["kind"], "every_kth");
    assert_eq!(saved["route_draw"]["max_k"], 2);
    // The recipe's temperature (plain --distill: 2, checked above).
    assert_eq!(saved["distill"]["temperature"], 1.0);
    assert_eq!(saved["distill"]["hidden_weight"], 10.0);
    assert_eq!(saved["learning_rate"], 2e-3);
    assert_eq!(saved["min_learning_rate"], 2e-4);
    assert_eq!(saved["weight_decay"], 0.0);
    assert_eq!(saved["model"]["sharing_adapter"]["rank"], 2);
    assert_eq!(
        (
            &saved["seq_len"],
            &saved["batch_size"],
            &saved["warmup_steps"],
            &saved["steps"]
        ),
        (&16.into(), &2.into(), &1.into(), &2.into())
    );

    // The second phase continues the first one's adapters (rank 2 here) on long windows.
    let long = root.path().join("long");
    let argv = fine_tune_args(
        &runs,
        &corpus,
        &long,
        &["--recipe", "sharing-adapters-long", "--steps", "1"],
    );
    run(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(long.join("checkpoint/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["learning_rate"], 5e-4);
    assert_eq!(saved["min_learning_rate"], 1e-4);
    assert_eq!(saved["data"]["text_file"]["seed"], 1);
    assert_eq!(saved["distill"]["temperature"], 2.0);
    assert_eq!(saved["distill"]["hidden_weight"], 10.0);
    assert_eq!(saved["route_draw"]["max_k"], 2);
    assert_eq!(saved["model"]["sharing_adapter"]["rank"], 2);
    // ... and refuses a starting model without adapters.
    let argv = fine_tune_args(
        &base,
        &corpus,
        &root.path().join("long-from-base"),
        &["--recipe", "sharing-adapters-long"],
    );
    let stderr = run_failing(&argv);
    assert!(stderr.contains("has none"), "{stderr}");

    let path = |p: &Path| p.to_str().unwrap().to_string();
    let without_start = [
        "train",
        "--recipe",
        "sharing-adapters",
        "--out",
        &path(&root.path().join("nothing")),
    ]
    .map(String::from);
    let stderr = run_failing(&without_start);
    assert!(stderr.contains("--init-from"), "{stderr}");
    let mut resumed = fine_tune_args(&base, &corpus, &runs, &["--recipe", "sharing-adapters"]);
    resumed.push("--resume".into());
    let stderr = run_failing(&resumed);
    assert!(stderr.contains("--resume"), "{stderr}");
    let alpha_alone = fine_tune_args(
        &base,
        &corpus,
        &root.path().join("alpha"),
        &["--sharing-adapter-alpha", "4"],
    );
    let stderr = run_failing(&alpha_alone);
    assert!(stderr.contains("--sharing-adapter R"), "{stderr}");
}

/// The random Llama checkpoint and a small corpus of its words, under `root`.
fn retrofit_fixture(root: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let base = root.join("llama");
    write_checkpoint(&base);
    let corpus = root.join("corpus.txt");
    std::fs::write(
        &corpus,
        "the cat sat on the mat and the dog ran . ".repeat(40),
    )
    .unwrap();
    (base, corpus)
}

/// `train` fine-tuning `base` on `corpus` into `out` (16-token windows, batch 2, one warmup
/// step, no validation or intermediate checkpoint, quiet), then `settings`.
fn fine_tune_args(base: &Path, corpus: &Path, out: &Path, settings: &[&str]) -> Vec<String> {
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let mut args: Vec<String> = vec![
        "train".into(),
        "--init-from".into(),
        path(base),
        "--data".into(),
        path(corpus),
        "--out".into(),
        path(out),
    ];
    args.extend(
        [
            "--seq-len",
            "16",
            "--batch-size",
            "2",
            "--warmup",
            "1",
            "--eval-every",
            "0",
            "--eval-batches",
            "1",
            "--checkpoint-every",
            "0",
            "--quiet",
        ]
        .iter()
        .chain(settings)
        .map(|s| s.to_string()),
    );
    args
}
