#!/usr/bin/env python3
"""kv-routing against llama.cpp on the same GGUF file, side by side: alternated rounds of one
workload, each side in a fresh process, tokens/s and peak resident memory of each.

    llama_cpp_paired.py --probe target/release/examples/real_probe --model FILE.gguf \\
        --workload decode|prefill --batch 1 --context 1024 [--rounds 4] [--repeats 32] \\
        [--weights as-stored] [--dtype f32] [--kv-dtype f16] [--threads 2] [--python PYTHON] \\
        [--int8-prompts]

kv-routing runs `real_probe MODEL WORKLOAD BATCH CONTEXT full DTYPE REPEATS KV_DTYPE WEIGHTS
PROMPT_PRODUCTS` (its
decode fills the cache with random keys/values instead of a prefill: same attention cost);
llama.cpp runs `llama_cpp_peer.py` (same tokens, prompt prefilled, KV cache f16: the default
KV_DTYPE here is f16 too, so that both hold the same cache bytes). The thread
count is the machine's for both (real_probe uses rayon's pool of one thread per core; the peer is
given --threads). Peak memory is each process's maximum resident set (`wait4`), everything the
process holds: weights, KV cache, activations, the Python interpreter for llama.cpp.
Prints one line per round and a summary with medians and the ratio kv-routing / llama.cpp.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def run(command: list[str]) -> tuple[str, int]:
    """Runs `command`, returns its stdout and its peak resident set in bytes."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"{command[0]} failed ({process.returncode}): {out}")
    return out, usage.ru_maxrss * 1024


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--probe", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--workload", choices=["decode", "prefill"], default="decode")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=32)
    parser.add_argument("--weights", default="as-stored")
    parser.add_argument("--dtype", default="f32")
    parser.add_argument("--kv-dtype", default="f16")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--int8-prompts", action="store_true",
                        help="kv-routing multiplies a prompt's rows with Q8_0 weights as 8-bit "
                             "integers, as llama.cpp does (real_probe's last argument)")
    args = parser.parse_args()

    ours_command = [args.probe, args.model, args.workload, str(args.batch), str(args.context),
                    "full", args.dtype, str(args.repeats), args.kv_dtype, args.weights,
                    "int8" if args.int8_prompts else "float"]
    peer_command = [args.python, str(HERE / "llama_cpp_peer.py"), args.model, args.workload,
                    str(args.batch), str(args.context), "--threads", str(args.threads),
                    "--repeats", str(args.repeats)]
    ours, peer, ours_memory, peer_memory = [], [], [], []
    for round_index in range(args.rounds):
        order = [("peer", peer_command), ("ours", ours_command)]
        if round_index % 2:
            order.reverse()
        for side, command in order:
            out, memory = run(command)
            if side == "peer":
                speed = json.loads(out.strip().splitlines()[-1])["tokens_per_second"]
                peer.append(speed)
                peer_memory.append(memory)
            else:
                speed = float(re.search(r"\(([0-9.]+) tokens/s\)", out).group(1))
                ours.append(speed)
                ours_memory.append(memory)
        print(f"round {round_index + 1}: kv-routing {ours[-1]:.1f} tokens/s ({ours_memory[-1] / 2**20:.0f} MiB), "
              f"llama.cpp {peer[-1]:.1f} tokens/s ({peer_memory[-1] / 2**20:.0f} MiB), "
              f"ratio {ours[-1] / peer[-1]:.2f}", flush=True)
    ratios = [o / p for o, p in zip(ours, peer)]
    print(json.dumps({
        "workload": args.workload, "batch": args.batch, "context": args.context,
        "weights": args.weights, "int8_prompts": args.int8_prompts, "dtype": args.dtype,
        "kv_dtype": args.kv_dtype, "threads": args.threads,
        "ours_tokens_per_second_median": statistics.median(ours),
        "llama_cpp_tokens_per_second_median": statistics.median(peer),
        "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "ours_peak_mib": max(ours_memory) / 2**20, "llama_cpp_peak_mib": max(peer_memory) / 2**20,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
