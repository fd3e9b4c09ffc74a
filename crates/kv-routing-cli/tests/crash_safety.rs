//! Crash safety: `kv-routing train` and `kv-routing export` are killed (SIGKILL) at random
//! points, many of them inside a checkpoint save or an export, and what they leave is checked.
//!
//! - Training: the checkpoint left behind (if the run got as far as its first save) loads, and
//!   `train --resume` from it finishes with weights, optimizer moments, router state and
//!   metrics.jsonl bit-for-bit equal to an uninterrupted run's.
//! - Export over an earlier export: the output directory is afterwards exactly the earlier
//!   export or exactly the new one, never a mixture or a partial file.
//!
//! The kill times are stratified over the uninterrupted duration and drawn from a seeded
//! generator (`KV_CRASH_SEED`, printed), `KV_CRASH_KILLS` sets how many.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod support;

use support::{metrics, train_args};

/// A short run that checkpoints after every step, without its model size.
const TRAIN_RUN: [&str; 16] = [
    "--steps",
    "12",
    "--seq-len",
    "16",
    "--batch-size",
    "2",
    "--p",
    "0.5",
    "--warmup",
    "2",
    "--eval-every",
    "0",
    "--eval-batches",
    "1",
    "--checkpoint-every",
    "1",
];

/// The run with a model of `layers` layers of width `d_model`.
fn train_shape(layers: &'static str, d_model: &'static str) -> Vec<&'static str> {
    [&TRAIN_RUN[..], &["--layers", layers, "--d-model", d_model]].concat()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kv-routing"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary runs")
}

/// Every file under `dir` (relative path → bytes).
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            found.insert(
                path.strip_prefix(dir).unwrap().to_path_buf(),
                std::fs::read(&path).unwrap(),
            );
        }
    }
    found
}

/// The run's state with its wall-clock time left out.
fn state(checkpoint: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(checkpoint.join("state.json")).unwrap();
    let mut state: serde_json::Value = serde_json::from_str(&text).unwrap();
    state.as_object_mut().unwrap().remove("elapsed_seconds");
    state
}

/// Runs `args` to completion, returning how long it took.
fn timed(args: &[&str]) -> Duration {
    let start = Instant::now();
    support::run(args);
    start.elapsed()
}

/// Kill times stratified over `span`: one uniform draw in each of `kills` equal slices.
fn kill_times(span: Duration, kills: u64, rng: &mut ChaCha8Rng) -> Vec<Duration> {
    (0..kills)
        .map(|i| span.mul_f64((i as f64 + rng.random_range(0.0..1.0)) / kills as f64))
        .collect()
}

/// `kv-routing export` of the run (or checkpoint) `model` into `out`.
fn export_args(model: &Path, out: &Path, dtype: &str) -> Vec<String> {
    ["export", "--checkpoint", model.to_str().unwrap()]
        .into_iter()
        .chain(["--out", out.to_str().unwrap(), "--dtype", dtype])
        .map(String::from)
        .collect()
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn kill_after(mut child: Child, delay: Duration) {
    std::thread::sleep(delay);
    // An error means it had already exited: a kill after the end is a case too.
    let _ = child.kill();
    child.wait().unwrap();
}

#[test]
fn training_killed_anywhere_resumes_bit_exactly() {
    let seed = env_u64("KV_CRASH_SEED", 7);
    let kills = env_u64("KV_CRASH_KILLS", 40);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let root = tempfile::tempdir().unwrap();
    let reference = root.path().join("reference");
    let shape = train_shape("2", "32");
    let duration = timed(&train_args(&reference, &shape));
    let reference_export = root.path().join("reference-export");
    support::run(&as_strs(&export_args(&reference, &reference_export, "f32")));
    let expected_weights = files(&reference_export);
    let expected_state = state(&reference.join("checkpoint"));
    let expected_metrics = metrics(&reference);

    let mut mid_save = 0;
    for (i, at) in kill_times(duration, kills, &mut rng)
        .into_iter()
        .enumerate()
    {
        let context = format!("kill {i} after {at:?} (KV_CRASH_SEED={seed})");
        let out = root.path().join(format!("killed-{i}"));
        kill_after(spawn(&train_args(&out, &shape)), at);
        let checkpoint = out.join("checkpoint");
        let sibling = |suffix: &str| out.join(format!("checkpoint.{suffix}"));
        if sibling("tmp").exists() || sibling("old").exists() {
            mid_save += 1;
        }
        let saved = checkpoint.is_dir() || sibling("old").is_dir();
        let finish = if saved {
            train_args(&out, &["--resume"])
        } else {
            // Killed before its first save: nothing to resume, the run starts again.
            train_args(&out, &shape)
        };
        let output = Command::new(env!("CARGO_BIN_EXE_kv-routing"))
            .args(&finish)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{context}: {finish:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // The weights, through a deterministic export (Burn's records hold random parameter
        // ids, so their bytes differ between processes). The optimizer moments were used by
        // every step after the resume: the metrics and the final weights depend on them.
        let exported = root.path().join(format!("killed-{i}-export"));
        support::run(&as_strs(&export_args(&out, &exported, "f32")));
        assert!(
            files(&exported) == expected_weights,
            "{context}: the final weights differ from the uninterrupted run's"
        );
        assert_eq!(state(&checkpoint), expected_state, "{context}");
        assert_eq!(metrics(&out), expected_metrics, "{context}");
    }
    eprintln!(
        "{kills} kills over {duration:?} (KV_CRASH_SEED={seed}): {mid_save} inside a checkpoint save"
    );
}

#[test]
fn an_export_killed_anywhere_leaves_the_old_output_or_the_new_one() {
    let seed = env_u64("KV_CRASH_SEED", 7);
    let kills = env_u64("KV_CRASH_KILLS", 40);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5a);
    let root = tempfile::tempdir().unwrap();
    // Two different models: a run stopped after 1 step and the same run after 3.
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    // Wider than the training test's model, so that writing takes more of an export's time.
    let shape = train_shape("4", "256");
    support::run(&train_args(&a, &[&shape[..], &["--stop-at", "1"]].concat()));
    support::run(&train_args(&b, &[&shape[..], &["--stop-at", "3"]].concat()));
    let export = |model: &Path, out: &Path| export_args(model, out, "f16");
    let (old_out, new_out) = (root.path().join("export-a"), root.path().join("export-b"));
    support::run(&as_strs(&export(&a, &old_out)));
    let duration = timed(&as_strs(&export(&b, &new_out)));
    let (old_files, new_files) = (files(&old_out), files(&new_out));
    assert_ne!(old_files, new_files, "the two exports must differ");

    let (mut old_seen, mut new_seen, mut mid_write) = (0, 0, 0);
    for (i, at) in kill_times(duration, kills, &mut rng)
        .into_iter()
        .enumerate()
    {
        let context = format!("kill {i} after {at:?} (KV_CRASH_SEED={seed})");
        let out = root.path().join(format!("export-{i}"));
        support::run(&as_strs(&export(&a, &out)));
        kill_after(spawn(&as_strs(&export(&b, &out))[..]), at);
        let sibling = |suffix: &str| root.path().join(format!("export-{i}.{suffix}"));
        if sibling("tmp").exists() || sibling("old").exists() {
            mid_write += 1;
        }
        kv_routing_hf::StagedDir::recover(&out).unwrap();
        let left = files(&out);
        if left == old_files {
            old_seen += 1;
        } else if left == new_files {
            new_seen += 1;
        } else {
            panic!(
                "{context}: the output is neither export: {:?}",
                left.iter()
                    .map(|(name, bytes)| (name.clone(), bytes.len()))
                    .collect::<Vec<_>>()
            );
        }
    }
    eprintln!(
        "{kills} kills over {duration:?} (KV_CRASH_SEED={seed}): {mid_write} inside the export's writes; the old export left {old_seen} times, the new one {new_seen} times"
    );
}
