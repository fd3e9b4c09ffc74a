//! `train --resume` continues a run exactly: stopped at step 3 of 6 and resumed without
//! repeating any option, it trains the remaining 3 steps, and every logged figure (losses,
//! gradient norms, learning rates, validation losses) equals the uninterrupted run's. (The
//! stopped run also validates the step it stops at, which the uninterrupted run skips.)
//!
//! `train --devices 2` (data-parallel, two workers on the CPU) trains the same run, and a run
//! stopped on two devices resumes on one.

use std::path::Path;

mod support;

use support::{assert_close, metrics, train_args};

fn train(out: &Path, extra: &[&str]) {
    support::run(&train_args(out, extra));
}

const SHAPE: [&str; 18] = [
    "--steps",
    "6",
    "--layers",
    "2",
    "--d-model",
    "32",
    "--seq-len",
    "16",
    "--batch-size",
    "2",
    "--p",
    "0.5",
    "--warmup",
    "2",
    "--eval-every",
    "2",
    "--eval-batches",
    "1",
];

#[test]
fn a_resumed_run_trains_only_its_remaining_steps_exactly() {
    let root = tempfile::tempdir().unwrap();
    let shape = SHAPE;
    let straight = root.path().join("straight");
    train(&straight, &shape);
    let split = root.path().join("split");
    train(&split, &[&shape[..], &["--stop-at", "3"]].concat());
    assert_eq!(metrics(&split).len(), 3);
    train(&split, &["--resume"]);
    let mut resumed = metrics(&split);
    assert_eq!(resumed.len(), 6, "6 steps in all, not the default 1000");
    assert!(resumed[2]["val_loss"].is_number(), "validated at the stop");
    resumed[2]["val_loss"] = serde_json::Value::Null;
    assert_eq!(resumed, metrics(&straight));
}

#[test]
fn two_devices_train_the_run_of_one_and_a_run_resumes_on_another_count() {
    let root = tempfile::tempdir().unwrap();
    let one = root.path().join("one");
    train(&one, &SHAPE);
    let two = root.path().join("two");
    train(&two, &[&SHAPE[..], &["--devices", "2"]].concat());
    assert_close(&metrics(&two), &metrics(&one));

    let switched = root.path().join("switched");
    train(
        &switched,
        &[&SHAPE[..], &["--devices", "2", "--stop-at", "3"]].concat(),
    );
    train(&switched, &["--resume", "--devices", "1"]);
    let mut resumed = metrics(&switched);
    resumed[2]["val_loss"] = serde_json::Value::Null;
    assert_close(&resumed, &metrics(&one));

    // A batch that does not split over the devices is refused before training.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kv-routing"))
        .args(train_args(
            &root.path().join("uneven"),
            &[&SHAPE[..], &["--devices", "3"]].concat(),
        ))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does not split evenly"), "{stderr}");
}
