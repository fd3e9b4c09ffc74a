#!/usr/bin/env python3
"""Writes crates/kv-routing-hf/tests/fixtures/smollm2_transformers.json: what Hugging Face
transformers computes from the real SmolLM2-135M-Instruct Q4_1 GGUF file (it dequantizes GGUF
itself, with llama.cpp's gguf-py): prompt token ids, the ten largest logits at the last prompt
position, and the greedy continuation. The Rust test `real_smollm2_gguf_matches_transformers`
(crates/kv-routing-hf/tests/loaders/gguf.rs, run when KV_ROUTING_SMOLLM2_GGUF names the file)
checks kv-routing's GGUF import against these figures.

Usage: transformers_reference.py PATH/SmolLM2-135M-Instruct.Q4_1.gguf OUT.json
"""
import json
import pathlib
import sys
from importlib.metadata import version

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "<|im_start|>user\nWhat is 17 + 25?<|im_end|>\n<|im_start|>assistant\n",
]
NEW_TOKENS = 24


def main() -> None:
    gguf = pathlib.Path(sys.argv[1])
    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    cases = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            last = model(ids).logits[0, -1]
            out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
        new = out[0, ids.shape[1]:].tolist()
        top = torch.topk(last, 10)
        cases.append({
            "prompt": prompt,
            "prompt_ids": ids[0].tolist(),
            "last_logits_top": [[int(t), float(v)] for v, t in zip(top.values, top.indices)],
            "greedy_ids": new,
            "greedy_text": tokenizer.decode(new, skip_special_tokens=True),
        })
    out = {
        "generator": f"transformers {version('transformers')}, torch {torch.__version__}, "
                     f"gguf {version('gguf')}, f32, greedy (generate stops at EOS)",
        "model": gguf.name,
        "cases": cases,
    }
    pathlib.Path(sys.argv[2]).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
