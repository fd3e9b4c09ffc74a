#!/usr/bin/env python3
"""Writes crates/kv-routing-hf/tests/fixtures/gguf_quant_blocks.json: random blocks of every
GGUF tensor type kv-routing dequantizes, with the values llama.cpp's own Python package
(`gguf`, its numpy dequantizers) reads from them. The Rust tests check kv-routing's
dequantizers against these values, so the fixture is an independent reference.

Usage (in an environment with `pip install gguf numpy`):
  python benches/real-model/gguf_quant_fixture.py crates/kv-routing-hf/tests/fixtures/gguf_quant_blocks.json
"""
import json
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from importlib.metadata import version

from gguf import GGML_QUANT_SIZES
from gguf.quants import dequantize

# Byte offsets of each block's f16 scale fields (random bytes there could be NaN or huge).
SCALES = {
    T.F16: [], T.BF16: [],
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}
BLOCKS = 2


def main() -> None:
    rng = np.random.default_rng(20261129)
    out = {"generator": f"gguf-py {version('gguf')} (llama.cpp), numpy {np.__version__}", "types": []}
    for qtype, scale_offsets in SCALES.items():
        block_values, block_bytes = GGML_QUANT_SIZES[qtype]
        n_blocks = BLOCKS * (32 if block_values == 1 else 1)
        raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
        if qtype == T.F16:
            raw = rng.uniform(-2, 2, n_blocks).astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
        if qtype == T.BF16:
            bits = rng.uniform(-2, 2, n_blocks).astype(np.float32).view(np.uint32) >> 16
            raw = bits.astype(np.uint16).view(np.uint8).reshape(n_blocks, 2)
        for at in scale_offsets:
            scale = rng.uniform(-0.05, 0.05, n_blocks).astype(np.float16)
            raw[:, at:at + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
        values = dequantize(raw.reshape(1, -1), qtype).reshape(-1)
        out["types"].append({
            "type": qtype.name,
            "id": int(qtype),
            "bytes": raw.tobytes().hex(),
            "values": [float(v) for v in values.astype(np.float32)],
        })
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, indent=0)
        f.write("\n")


if __name__ == "__main__":
    main()
