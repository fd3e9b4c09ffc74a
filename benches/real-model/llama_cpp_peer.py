#!/usr/bin/env python3
"""llama.cpp peer: times one workload on a GGUF file, as `real_probe` times it for kv-routing.

    llama_cpp_peer.py MODEL decode|prefill BATCH CONTEXT [--threads 2] [--repeats 32]

Runs llama.cpp through `llama-cpp-python`'s low-level bindings (the C API: a context with BATCH
sequences, one KV stream each, `llama_decode` on a batch of tokens), weights as the file stores
them (Q4_1, Q8_0, ... multiplied by llama.cpp's own kernels), KV cache in f16 (llama.cpp's
default).

- decode: every sequence gets a prompt of CONTEXT synthetic tokens (untimed prefill), then
  REPEATS timed steps, each one new token for every sequence in one `llama_decode` call.
- prefill: REPEATS timed prefills of CONTEXT tokens for every sequence (the cache cleared
  before each; logits of the last position only).

Tokens are `(i * 31 + b * 7) % vocab`, as kv-routing's benchmarks use. Prints one JSON line:
{"workload", "batch", "context", "threads", "median_ms", "min_ms", "max_ms", "tokens_per_second",
 "llama_cpp_python", "system_info"}; peak resident memory is measured by the caller (wait4).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import llama_cpp as llama


def synthetic(batch: int, length: int, vocab: int, offset: int = 0) -> list[list[int]]:
    return [[((i + offset) * 31 + b * 7) % vocab for i in range(length)] for b in range(batch)]


def fill(batch, sequences: list[list[int]], start: int, logits_last: bool) -> None:
    """Puts every sequence's tokens (positions from `start`) into `batch`."""
    n = 0
    for seq, tokens in enumerate(sequences):
        for i, token in enumerate(tokens):
            batch.token[n] = token
            batch.pos[n] = start + i
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq
            batch.logits[n] = 1 if (logits_last and i == len(tokens) - 1) else 0
            n += 1
    batch.n_tokens = n


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("workload", choices=["decode", "prefill"])
    parser.add_argument("batch", type=int)
    parser.add_argument("context", type=int)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=32)
    args = parser.parse_args()

    llama.llama_backend_init()
    model_params = llama.llama_model_default_params()
    model = llama.llama_model_load_from_file(args.model.encode(), model_params)
    if not model:
        print(json.dumps({"error": f"cannot load {args.model}"}))
        return 1
    vocab = llama.llama_vocab_n_tokens(llama.llama_model_get_vocab(model))
    steps = args.repeats + 1 if args.workload == "decode" else 0
    per_sequence = args.context + steps
    context_params = llama.llama_context_default_params()
    context_params.n_ctx = per_sequence * args.batch
    context_params.n_seq_max = args.batch
    context_params.n_batch = max(args.context * args.batch, args.batch)
    context_params.n_ubatch = min(512, context_params.n_batch)
    context_params.n_threads = args.threads
    context_params.n_threads_batch = args.threads
    # One KV stream per sequence (each attends over its own cells only); a unified cache would
    # make every sequence's attention scan all sequences' cells, masked.
    context_params.kv_unified = False
    ctx = llama.llama_init_from_model(model, context_params)
    if not ctx:
        print(json.dumps({"error": "cannot create a context"}))
        return 1
    memory = llama.llama_get_memory(ctx)
    batch = llama.llama_batch_init(context_params.n_batch, 0, args.batch)
    prompts = synthetic(args.batch, args.context, vocab)

    def decode_batch() -> None:
        status = llama.llama_decode(ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}")

    times = []
    if args.workload == "prefill":
        for _ in range(args.repeats + 1):
            llama.llama_memory_clear(memory, True)
            fill(batch, prompts, 0, True)
            start = time.perf_counter()
            decode_batch()
            llama.llama_synchronize(ctx)
            times.append((time.perf_counter() - start) * 1e3)
        times = times[1:]  # the first one warms up
        tokens = args.batch * args.context
    else:
        fill(batch, prompts, 0, True)
        decode_batch()
        for step in range(steps):
            fill(batch, [[(b + step) % vocab + 32] for b in range(args.batch)], args.context + step, True)
            start = time.perf_counter()
            decode_batch()
            llama.llama_synchronize(ctx)
            times.append((time.perf_counter() - start) * 1e3)
        times = times[1:]
        tokens = args.batch
    median = statistics.median(times)
    print(json.dumps({
        "workload": args.workload,
        "batch": args.batch,
        "context": args.context,
        "threads": args.threads,
        "median_ms": median,
        "min_ms": min(times),
        "max_ms": max(times),
        "tokens_per_second": tokens * 1e3 / median,
        "llama_cpp_python": llama.__version__,
        "system_info": llama.llama_print_system_info().decode(),
    }))
    llama.llama_batch_free(batch)
    llama.llama_free(ctx)
    llama.llama_model_free(model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
