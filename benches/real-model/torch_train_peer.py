#!/usr/bin/env python3
"""PyTorch-eager peer of `kv-routing train`: the same training step on the same model.

One training step, as `kv-routing train` runs it (docs/training.md): a batch of B sequences of
T tokens, the routed forward of a Llama-family model (layer l attends with its own queries to the
keys/values of layer src[l]; layers that no layer reads run no k_proj/v_proj), mean next-token
cross-entropy over all B x T targets, backward, global-norm gradient clipping, AdamW (decoupled
weight decay), in f32 (or bf16/f16) on `--threads` CPU threads. The model is the checkpoint's
own transformers modules (LlamaForCausalLM from a GGUF file, dequantized, or a Hugging Face
directory), as in torch_peer.py.

Routes: `full` (stock model), `every:K` (the plan keeping every K-th layer) or `uniform:P` (the
paper's draw: each layer l >= 1 independently with probability P reads a layer drawn uniformly
from 0..l-1; torch's own generator, seeded by --seed and the step).

Data: consecutive windows of T+1 tokens of --data, tokenized by the model's tokenizer, or, without
--data, ids (i*31 + b*7 + step) % vocab.

Output (stdout): one JSON line per step {"step", "seconds", "loss", "grad_norm"}, then one summary
line {"summary": true, "tokens_per_second": median over steps after the first, "peak_rss_bytes",
"torch", "transformers", "threads", "dtype", ...}. Everything else goes to stderr.

Usage: torch_train_peer.py --model FILE_OR_DIR [--data TXT] [--batch 4] [--seq-len 512]
       [--steps 5] [--route full] [--lr 1e-4] [--threads 2] [--dtype f32]
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import transformers
from transformers import AutoTokenizer
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

from torch_peer import DTYPES, load_model


def sources(route: str, n_layers: int, rng: random.Random) -> list[int]:
    if route == "full":
        return list(range(n_layers))
    kind, _, value = route.partition(":")
    if kind == "every":
        k = int(value)
        return [layer - layer % k for layer in range(n_layers)]
    if kind == "uniform":
        p = float(value)
        return [0] + [rng.randrange(layer) if rng.random() < p else layer
                      for layer in range(1, n_layers)]
    raise ValueError(f"route {route!r}: expected full, every:K or uniform:P")


def routed_logits(model, ids: torch.Tensor, src: list[int]) -> torch.Tensor:
    """Full-sequence routed forward with the checkpoint's modules: [B, T, vocab]."""
    cfg = model.config
    b, t = ids.shape
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    x = model.model.embed_tokens(ids)
    cos, sin = model.model.rotary_emb(x, torch.arange(t).unsqueeze(0).expand(b, t))
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    read = set(src)
    for layer_idx, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(b, t, -1, hd).transpose(1, 2)
        if layer_idx in read:
            k = attn.k_proj(h).view(b, t, -1, hd).transpose(1, 2)
            v = attn.v_proj(h).view(b, t, -1, hd).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            kv[layer_idx] = (k, v)
        else:
            q, _ = apply_rotary_pos_emb(q, q[:, :1], cos, sin)
        k, v = kv[src[layer_idx]]
        rep = q.shape[1] // k.shape[1]
        o = F.scaled_dot_product_attention(q, repeat_kv(k, rep), repeat_kv(v, rep),
                                           is_causal=True, scale=attn.scaling)
        x = x + attn.o_proj(o.transpose(1, 2).reshape(b, t, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return model.lm_head(model.model.norm(x))


def batches(args, model, vocab: int):
    if args.data:
        source = args.model if not args.model.endswith(".gguf") else None
        if source is None:
            import pathlib
            p = pathlib.Path(args.model)
            tokenizer = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
        else:
            tokenizer = AutoTokenizer.from_pretrained(source)
        need = args.steps * args.batch * (args.seq_len + 1)
        text = open(args.data, encoding="utf-8").read(need * 8)
        ids = tokenizer(text)["input_ids"]
        if len(ids) < need:
            raise SystemExit(f"{args.data} holds {len(ids)} tokens, the run needs {need}")
        ids = torch.tensor(ids[:need]).view(args.steps, args.batch, args.seq_len + 1)
        yield from ids
    else:
        for step in range(args.steps):
            i = torch.arange(args.seq_len + 1)
            rows = [(i * 31 + b * 7 + step) % vocab for b in range(args.batch)]
            yield torch.stack(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--route", default="full")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = sys.stdout
    sys.stdout = sys.stderr

    def send(obj) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = load_model(args.model, DTYPES[args.dtype]).train()
    n_layers = model.config.num_hidden_layers
    # Burn's AdamW defaults (kv-routing's optimizer): betas 0.9/0.999, epsilon 1e-5.
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-5,
                                  weight_decay=args.weight_decay)
    seconds = []
    for step, batch in enumerate(batches(args, model, model.config.vocab_size)):
        src = sources(args.route, n_layers, random.Random(args.seed * 1_000_003 + step))
        start = time.perf_counter()
        inputs, targets = batch[:, :-1], batch[:, 1:]
        logits = routed_logits(model, inputs, src)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        loss_value = loss.item()
        seconds.append(time.perf_counter() - start)
        send({"step": step, "seconds": seconds[-1], "loss": loss_value,
              "grad_norm": float(norm), "src": src})
    timed = seconds[1:] or seconds
    send({"summary": True, "steps": len(seconds), "batch": args.batch, "seq_len": args.seq_len,
          "route": args.route,
          "tokens_per_second": args.batch * args.seq_len / statistics.median(timed),
          "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
          "torch": torch.__version__, "transformers": transformers.__version__,
          "threads": torch.get_num_threads(), "dtype": args.dtype,
          "python": platform.python_version()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
