#!/usr/bin/env python3
"""The f32 matrix-multiply rate this machine sustains (PyTorch, --threads), the practical bound for
a training step whose FLOPs are nearly all matrix products. Prints GFLOP/s per shape: square 2048,
and SmolLM2-135M's training shapes at 4 x 512 tokens (MLP up/down, attention, the vocabulary head).
Usage: matmul_peak.py [--threads 2] [--repeats 5]"""
import argparse
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--repeats", type=int, default=5)
args = ap.parse_args()
torch.set_num_threads(args.threads)
shapes = {"square 2048": (2048, 2048, 2048), "mlp up 2048x576 @ 576x1536": (2048, 576, 1536),
          "mlp down 2048x1536 @ 1536x576": (2048, 1536, 576),
          "attention 2048x576 @ 576x576": (2048, 576, 576),
          "head 2048x576 @ 576x49152": (2048, 576, 49152)}
for name, (m, k, n) in shapes.items():
    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b
    timings = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        a @ b
        timings.append(time.perf_counter() - start)
    best = min(timings)
    print(f"{name:32} {2 * m * k * n / best / 1e9:7.1f} GFLOP/s  (threads {torch.get_num_threads()})")
