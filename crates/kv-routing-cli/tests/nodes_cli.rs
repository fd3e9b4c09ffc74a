//! `train --nodes N`: several node processes on 127.0.0.1 (ports chosen free at run time) train
//! the run of one process with the whole batch; a node of another run is refused; a node that
//! dies or never joins stops the others with an error in bounded time; a run stopped on two
//! nodes resumes on one, and on two bit for bit.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

mod support;

use support::{assert_close, metrics, train_args};

/// Three routed, clipped steps of a tiny model: a batch of 12 splits over 1, 2 or 3 nodes and
/// 2 devices; a gradient norm above the clip of 0.5 makes every step clip.
const RUN: [&str; 20] = [
    "--steps",
    "3",
    "--layers",
    "3",
    "--d-model",
    "32",
    "--seq-len",
    "16",
    "--batch-size",
    "12",
    "--p",
    "0.7",
    "--warmup",
    "1",
    "--eval-every",
    "1",
    "--eval-batches",
    "1",
    "--grad-clip",
    "0.5",
];

/// [`RUN`] with some of its settings changed.
fn with_settings(changes: &[(&str, &str)]) -> Vec<String> {
    let mut args: Vec<String> = RUN.iter().map(|a| a.to_string()).collect();
    for (flag, value) in changes {
        let at = args.iter().position(|a| a == flag).expect("a flag of RUN");
        args[at + 1] = value.to_string();
    }
    args
}

/// Tests that start nodes run one at a time: a port found free is released before node 0
/// binds it, and two tests in parallel could be handed the same one (seen in the library's
/// own node tests: one test's nodes joined the other's coordinator).
fn one_group_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static GROUPS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    GROUPS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn free_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
}

/// Starts node `rank` of `nodes`, told where to meet through the launcher's environment
/// variables.
fn spawn_node(out: &Path, rank: usize, nodes: usize, coordinator: &str, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kv-routing"))
        .args(train_args(out, extra))
        .env("KV_ROUTING_NODES", nodes.to_string())
        .env("KV_ROUTING_NODE_RANK", rank.to_string())
        .env("KV_ROUTING_COORDINATOR", coordinator)
        .env("KV_ROUTING_NODE_TIMEOUT", "20")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs")
}

/// Runs `outs.len()` nodes (rank r writing to `outs[r]`) to their end; their outputs by rank.
fn run_nodes(outs: &[&Path], extra: &[&str]) -> Vec<Output> {
    let coordinator = free_address();
    let children: Vec<Child> = outs
        .iter()
        .enumerate()
        .map(|(rank, out)| spawn_node(out, rank, outs.len(), &coordinator, extra))
        .collect();
    children
        .into_iter()
        .map(|child| child.wait_with_output().unwrap())
        .collect()
}

fn succeeded(outputs: &[Output]) {
    for (rank, output) in outputs.iter().enumerate() {
        assert!(
            output.status.success(),
            "node {rank} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

struct Collect(Vec<f32>);

impl<B: Backend> ModuleVisitor<B> for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let data = param.val().into_data().convert::<f32>();
        self.0.extend(data.into_vec::<f32>().unwrap());
    }
}

/// Every weight of the run in `out`, in the model's order.
fn weights(out: &Path) -> Vec<f32> {
    let device = kv_routing_backend::device();
    let (_, model) = kv_routing_train::checkpoint::load_model::<kv_routing_backend::Backend>(
        &out.join("checkpoint"),
        &device,
    )
    .unwrap();
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    collect.0
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn train(out: &Path, extra: &[&str]) {
    support::run(&train_args(out, extra));
}

#[test]
fn two_and_three_nodes_train_the_run_of_one_process_with_the_whole_batch() {
    let _serial = one_group_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let one = root.path().join("one");
    train(&one, &RUN);
    let expected = weights(&one);

    for (nodes, devices) in [(2, "1"), (3, "1"), (2, "2")] {
        let outs: Vec<_> = (0..nodes)
            .map(|rank| root.path().join(format!("n{nodes}-d{devices}-rank{rank}")))
            .collect();
        let out_refs: Vec<&Path> = outs.iter().map(|p| p.as_path()).collect();
        let outputs = run_nodes(&out_refs, &[&RUN[..], &["--devices", devices]].concat());
        succeeded(&outputs);
        let difference = max_difference(&weights(&outs[0]), &expected);
        assert!(
            difference <= 1e-5,
            "{nodes} nodes x {devices} devices: weights differ by {difference}"
        );
        assert_close(&metrics(&outs[0]), &metrics(&one));
        let note = std::fs::read_to_string(outs[0].join("RESUME.md")).unwrap();
        assert!(note.contains("--nodes N --node-rank R"), "{note}");
        // Only rank 0 writes: the others' run directories are never created.
        for out in &outs[1..] {
            assert!(!out.exists(), "{} was written", out.display());
        }
        assert!(
            String::from_utf8_lossy(&outputs[1].stdout).contains(&format!("as node 1 of {nodes}"))
        );
    }
}

#[test]
fn a_node_of_another_run_is_refused_and_every_node_stops() {
    let _serial = one_group_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let coordinator = free_address();
    let started = Instant::now();
    let zero = spawn_node(&root.path().join("a"), 0, 2, &coordinator, &RUN);
    let one = spawn_node(
        &root.path().join("b"),
        1,
        2,
        &coordinator,
        &[&RUN[..], &["--seed", "1"]].concat(),
    );
    let (zero, one) = (
        zero.wait_with_output().unwrap(),
        one.wait_with_output().unwrap(),
    );
    assert!(!zero.status.success() && !one.status.success());
    for output in [&zero, &one] {
        let message = stderr(output);
        assert!(
            message.contains("seed is 1 on node 1 and 0 on node 0"),
            "{message}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        !root.path().join("a").join("checkpoint").exists(),
        "nothing trained"
    );
}

#[test]
fn a_node_that_dies_or_never_joins_stops_the_others_in_bounded_time() {
    let _serial = one_group_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("run");
    let coordinator = free_address();
    // Long enough to be killed in the middle, a checkpoint written at every step.
    let long = with_settings(&[("--steps", "100000"), ("--eval-every", "0")]);
    let long: Vec<&str> = long
        .iter()
        .map(String::as_str)
        .chain(["--checkpoint-every", "1"])
        .collect();
    let mut nodes: Vec<Child> = (0..3)
        .map(|rank| spawn_node(&out, rank, 3, &coordinator, &long))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(out.join("metrics.jsonl")).map_or(0, |log| log.lines().count())
        < 3
    {
        for (rank, node) in nodes.iter_mut().enumerate() {
            assert!(
                node.try_wait().unwrap().is_none(),
                "node {rank} stopped early"
            );
        }
        assert!(Instant::now() < deadline, "the nodes never trained");
        std::thread::sleep(Duration::from_millis(20));
    }
    nodes[2].kill().unwrap();
    let killed = Instant::now();
    let survivors: Vec<Output> = nodes
        .drain(..2)
        .map(|child| child.wait_with_output().unwrap())
        .collect();
    // A dead peer's connection closes at once: far below the 20 s node timeout.
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "{:?}",
        killed.elapsed()
    );
    for (rank, output) in survivors.iter().enumerate() {
        assert!(!output.status.success(), "node {rank} went on");
        let message = stderr(output);
        assert!(
            message.contains("node 2 closed its connection"),
            "node {rank}: {message}"
        );
    }
    nodes[0].wait().unwrap();
    // The checkpoint is a whole one: the run resumes from it on one node.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("checkpoint/state.json")).unwrap())
            .unwrap();
    let saved = state["step"].as_u64().unwrap();
    assert!(saved >= 3);
    let next = (saved + 1).to_string();
    train(&out, &["--resume", "--stop-at", &next]);
    assert_eq!(metrics(&out).len() as u64, saved + 1);

    // A node that never joins: rank 0 gives up after its timeout, with the missing rank.
    let started = Instant::now();
    let lonely = Command::new(env!("CARGO_BIN_EXE_kv-routing"))
        .args(train_args(&root.path().join("lonely"), &RUN))
        .args(["--nodes", "2", "--node-rank", "0", "--node-timeout", "1"])
        .args(["--coordinator", &free_address()])
        .output()
        .unwrap();
    assert!(!lonely.status.success());
    assert!(
        stderr(&lonely).contains("node(s) 1 did not join within 1 s"),
        "{}",
        stderr(&lonely)
    );
    // ... and a node whose coordinator never listens gives up after its own.
    let orphan = Command::new(env!("CARGO_BIN_EXE_kv-routing"))
        .args(train_args(&root.path().join("orphan"), &RUN))
        .args(["--nodes", "2", "--node-rank", "1", "--node-timeout", "1"])
        .args(["--coordinator", &free_address()])
        .output()
        .unwrap();
    assert!(!orphan.status.success());
    assert!(
        stderr(&orphan).contains("cannot reach the coordinator"),
        "{}",
        stderr(&orphan)
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );

    // Settings that cannot work are refused before anything starts.
    for (args, expected) in [
        (vec!["--nodes", "2"], "needs --coordinator"),
        (
            vec![
                "--nodes",
                "2",
                "--node-rank",
                "2",
                "--coordinator",
                "127.0.0.1:1",
            ],
            "not below the node count",
        ),
        (
            vec!["--nodes", "5", "--coordinator", "127.0.0.1:1"],
            "does not split evenly over 5 nodes",
        ),
    ] {
        let message = support::run_failing(
            &[&train_args(&root.path().join("bad"), &RUN)[..], &args].concat(),
        );
        assert!(message.contains(expected), "{args:?}: {message}");
    }
}

#[test]
fn a_run_stopped_on_two_nodes_resumes_on_one_and_on_two_exactly() {
    let _serial = one_group_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let one = root.path().join("one");
    train(&one, &RUN);
    let two = root.path().join("two");
    succeeded(&run_nodes(&[&two, &two], &RUN));

    // Stopped on two nodes, resumed on one: the run of one node, up to float noise.
    let switched = root.path().join("switched");
    succeeded(&run_nodes(
        &[&switched, &switched],
        &[&RUN[..], &["--stop-at", "2"]].concat(),
    ));
    train(&switched, &["--resume"]);
    let mut resumed = metrics(&switched);
    resumed[1]["val_loss"] = metrics(&one)[1]["val_loss"].clone();
    assert_close(&resumed, &metrics(&one));
    let difference = max_difference(&weights(&switched), &weights(&one));
    assert!(difference <= 1e-5, "weights differ by {difference}");

    // Stopped on two nodes, resumed on two (both reading rank 0's checkpoint): bit for bit
    // the uninterrupted two-node run.
    let again = root.path().join("again");
    succeeded(&run_nodes(
        &[&again, &again],
        &[&RUN[..], &["--stop-at", "2"]].concat(),
    ));
    succeeded(&run_nodes(&[&again, &again], &["--resume"]));
    assert_eq!(metrics(&again), metrics(&two));
    assert_eq!(weights(&again), weights(&two));
}
