#!/usr/bin/env python3
"""Paired training benchmark: `kv-routing train` against PyTorch eager (torch_train_peer.py).

Both sides fine-tune the same model file with the same step (B x T tokens, routed forward,
mean cross-entropy, backward, global-norm clipping at 1, AdamW, f32, the same threads), each in
its own process, alternating round by round (A B, B A, ...) so that drift of the machine falls on
both. Per process: tokens/s as the median of its steps after the first (the first carries
one-time allocation) and before the last (kv-routing validates and checkpoints there), and its
peak resident memory (ru_maxrss from wait4: loading, training and, for kv-routing, the final
checkpoint save). Prints one line per process, then the medians and the ratio kv-routing /
PyTorch of tokens/s and of peak memory.

Usage: paired_training.py --kv target/release/kv-routing --model SmolLM2.gguf --data train.txt
       [--batch 4] [--seq-len 512] [--steps 5] [--rounds 2] [--p 0] [--threads 2]
`--p P > 0` trains both under the paper's uniform routes (each side draws its own).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent


def kv_round(args, env) -> tuple[float, int]:
    with tempfile.TemporaryDirectory(dir=args.scratch) as out:
        cmd = [args.kv, "train", "--init-from", args.model, "--data", args.data,
               "--seq-len", str(args.seq_len), "--batch-size", str(args.batch),
               "--steps", str(args.steps), "--warmup", "1", "--lr", "1e-4", "--weight-decay", "0",
               "--eval-every", "0", "--eval-batches", "1", "--checkpoint-every", "0",
               "--p", str(args.p), "--quiet", "--out", out]
        rss = spawn(cmd, env)
        lines = pathlib.Path(out, "metrics.jsonl").read_text().splitlines()
        rates = [json.loads(line)["tokens_per_second"] for line in lines]
    return statistics.median(middle(rates)), rss


def torch_round(args, env) -> tuple[float, int]:
    route = "full" if args.p == 0 else f"uniform:{args.p}"
    cmd = [args.python, str(HERE / "torch_train_peer.py"), "--model", args.model,
           "--data", args.data, "--batch", str(args.batch), "--seq-len", str(args.seq_len),
           "--steps", str(args.steps), "--route", route, "--threads", str(args.threads)]
    stdout_path = pathlib.Path(args.scratch, "torch_peer.out")
    with open(stdout_path, "w") as stdout:
        rss = spawn(cmd, env, stdout)
    steps = [json.loads(line) for line in stdout_path.read_text().splitlines()]
    rates = [args.batch * args.seq_len / s["seconds"] for s in steps if "seconds" in s]
    return statistics.median(middle(rates)), rss


def middle(rates: list[float]) -> list[float]:
    """Steps after the first and before the last, when there are enough."""
    return rates[1:-1] if len(rates) >= 4 else rates[1:] or rates


def spawn(cmd: list[str], env: dict[str, str], stdout=subprocess.DEVNULL) -> int:
    """Runs cmd to completion; returns its peak resident bytes (wait4's ru_maxrss)."""
    err = open(pathlib.Path(tempfile.gettempdir(), "paired_training.err"), "w")
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=err, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err.close()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:2])} failed ({proc.returncode}); see {err.name}")
    return usage.ru_maxrss * 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kv", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--p", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--scratch", default=tempfile.gettempdir())
    args = ap.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    sides = {"kv-routing": kv_round, "pytorch": torch_round}
    results: dict[str, list[tuple[float, int]]] = {name: [] for name in sides}
    for round_index in range(args.rounds):
        order = list(sides) if round_index % 2 == 0 else list(reversed(sides))
        for name in order:
            rate, rss = sides[name](args, env)
            results[name].append((rate, rss))
            print(f"round {round_index} {name:10} {rate:8.1f} tokens/s  peak {rss / 2**30:.2f} GiB",
                  flush=True)
    summary = {name: (statistics.median(r for r, _ in v), max(m for _, m in v))
               for name, v in results.items()}
    for name, (rate, rss) in summary.items():
        print(f"{name:10} median {rate:8.1f} tokens/s  peak {rss / 2**30:.2f} GiB")
    (kv_rate, kv_rss), (pt_rate, pt_rss) = summary["kv-routing"], summary["pytorch"]
    print(f"B={args.batch} T={args.seq_len} p={args.p} threads={args.threads}: "
          f"kv-routing / pytorch tokens/s {kv_rate / pt_rate:.2f}x, peak memory {kv_rss / pt_rss:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
