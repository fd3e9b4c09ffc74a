#!/usr/bin/env python3
"""Held-out perplexity of SmolLM2 when its keys/values are rounded to fewer bits, simulated in
Hugging Face transformers: the question behind issue 26's "4-bit if the measurements justify it".

Every layer's rotated keys and its values are rounded per token and key/value head in blocks of
32 values before attention reads them (what a cache in that format would hand back), then
dequantized; the full sequence is scored. Formats: `f16` (the reference), `int8` (kv-routing's:
symmetric, codes in -127..=127, scale max|x|/127), `int4` (symmetric, -7..=7, as llama.cpp's
q4_0 up to its offset), `int4-asym` (min and step per block, codes 0..=15, as q4_1). The int8 row
checks the simulation against kv-routing's own measurement (docs/results.md: +0.03%).

Usage: kv_bits_quality.py PATH/SmolLM2-135M-Instruct.Q4_1.gguf HELDOUT.txt [WINDOWS]
"""
import math
import pathlib
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.models.llama import modeling_llama

BLOCK = 32
SEQ = 512


def rounded(x: torch.Tensor, fmt: str) -> torch.Tensor:
    if fmt == "f16":
        return x.half().float()
    shape = x.shape
    b = x.reshape(*shape[:-1], shape[-1] // BLOCK, BLOCK)
    if fmt in ("int8", "int4"):
        top = 127.0 if fmt == "int8" else 7.0
        scale = b.abs().amax(-1, keepdim=True) / top
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        out = torch.round(b / safe).clamp(-top, top) * scale
    elif fmt == "int4-asym":
        low, high = b.amin(-1, keepdim=True), b.amax(-1, keepdim=True)
        step = (high - low) / 15.0
        safe = torch.where(step > 0, step, torch.ones_like(step))
        out = low + torch.round((b - low) / safe).clamp(0, 15) * step
    else:
        raise ValueError(fmt)
    return out.reshape(shape)


def main() -> None:
    gguf = pathlib.Path(sys.argv[1])
    text = pathlib.Path(sys.argv[2]).read_text()
    windows = int(sys.argv[3]) if len(sys.argv) > 3 else 12
    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    batches = [ids[i * SEQ:(i + 1) * SEQ] for i in range(windows)]
    original = modeling_llama.eager_attention_forward
    results = {}
    for fmt in ["f16", "int8", "int4", "int4-asym"]:
        def patched(module, query, key, value, *args, **kwargs):
            return original(module, query, rounded(key, fmt), rounded(value, fmt), *args, **kwargs)
        modeling_llama.eager_attention_forward = patched
        total, count = 0.0, 0
        with torch.inference_mode():
            for window in batches:
                logits = model(window[None]).logits[0, :-1]
                loss = torch.nn.functional.cross_entropy(logits, window[1:], reduction="sum")
                total += float(loss)
                count += window.numel() - 1
        modeling_llama.eager_attention_forward = original
        results[fmt] = math.exp(total / count)
        change = 100.0 * (results[fmt] / results["f16"] - 1.0)
        print(f"{fmt:10s} perplexity {results[fmt]:.4f}  vs f16 {change:+.2f}%", flush=True)


if __name__ == "__main__":
    main()
