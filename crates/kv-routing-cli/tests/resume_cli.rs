//! `train --resume` continues a run exactly: stopped at step 3 of 6 and resumed without
//! repeating any option, it trains the remaining 3 steps, and every logged figure (losses,
//! gradient norms, learning rates, validation losses) equals the uninterrupted run's. (The
//! stopped run also validates the step it stops at, which the uninterrupted run skips.)

use std::path::Path;

mod support;

use support::{metrics, train_args};

fn train(out: &Path, extra: &[&str]) {
    support::run(&train_args(out, extra));
}

#[test]
fn a_resumed_run_trains_only_its_remaining_steps_exactly() {
    let root = tempfile::tempdir().unwrap();
    let shape = [
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
