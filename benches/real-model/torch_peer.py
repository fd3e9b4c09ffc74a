#!/usr/bin/env python3
"""PyTorch-eager peer of the routed (cross-layer KV sharing) transformer forward.

Runs the same routed forward as the Rust library on a Hugging Face Llama-family checkpoint,
using the checkpoint's own modules and weights (transformers' LlamaForCausalLM) with a
hand-written layer loop, so that the Rust benchmark runner can time both implementations side
by side, interleaved round by round.

Routing: a plan is a sorted list S of cached layers (layer 0 always in S). Layer l reads the
K/V of src(l) = max{s in S : s <= l}. Layers in S run k_proj/v_proj (+ RoPE on keys) and write
their preallocated cache [batch, n_kv_heads, capacity, head_dim] in place; other layers run no
k_proj/v_proj and store nothing. Every layer computes its own queries. The full plan is stock Llama.

Protocol: the runner starts `torch_peer.py --model DIR [--threads N] [--dtype f32|bf16|f16]`
once as a subprocess. After loading, the peer prints one line
  {"ready": true, "torch": ..., "transformers": ..., "threads": ..., "dtype": ..., "n_layers": ...,
   "python": ...}
then answers one JSON request per stdin line with one JSON reply per stdout line (flushed):
  {"op":"decode","batch":B,"context":C,"plan":[..],"steps":N,"warmup":W}
      cache of capacity C+W+N, slots 0..C random, W untimed then N timed decode steps
      -> {"op":"decode","seconds":s,"steps":N,"tokens_per_second":B*N/s}
  {"op":"prefill","batch":B,"length":L,"plan":[..],"repeats":R}
      token (i*31 + b*7) % vocab; R timed prefills (fresh cache, last-position logits)
      -> {"op":"prefill","seconds":[R timings]}
  {"op":"logits","tokens":[[ids],..],"plan":[..],"decode":D}
      prefill, then D greedy tokens: greedy[0] = argmax(prefill_last), greedy[k] = argmax of the
      decode step fed greedy[k-1] (D-1 decode steps; argmax takes the lowest id on ties)
      -> {"op":"logits","prefill_last":[[vocab floats]..],"greedy":[[D ids]..]}
  {"op":"quit"} -> exit 0.  EOF also exits 0.
An invalid request gets {"error": "..."} and the peer keeps serving. Nothing else goes to stdout
(library output is redirected to stderr).

`--self-test` (f32) checks the cached path against stock transformers (full plan) and
against a no-cache full-sequence recomputation (routed plan; also in f64, tolerance 1e-9),
prints one line per check and exits 0 if all pass, else 1.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from transformers import AutoModelForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv, rotate_half

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
Cache = dict[int, tuple[torch.Tensor, torch.Tensor]]


def _gqa_supported() -> bool:
    q = torch.zeros(1, 2, 1, 4)
    kv = torch.zeros(1, 1, 1, 4)
    try:
        F.scaled_dot_product_attention(q, kv, kv, enable_gqa=True)
        return True
    except TypeError:
        return False


class RoutedLlama:
    """Routed forward over a loaded LlamaForCausalLM's own modules."""

    def __init__(self, model: Any) -> None:
        cfg = model.config
        self.model = model
        self.embed = model.model.embed_tokens
        self.layers = list(model.model.layers)
        self.norm = model.model.norm
        self.rotary = model.model.rotary_emb
        self.lm_head = model.lm_head
        self.n_layers = len(self.layers)
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.vocab = cfg.vocab_size
        self.dtype = next(model.parameters()).dtype
        self.gqa = _gqa_supported()

    def check_plan(self, plan: Any) -> list[int]:
        if not isinstance(plan, list) or not plan or not all(type(s) is int for s in plan):
            raise ValueError("plan must be a non-empty list of layer indices")
        if plan[0] != 0:
            raise ValueError("plan must contain layer 0 first")
        if any(b <= a for a, b in zip(plan, plan[1:])):
            raise ValueError("plan must be strictly increasing")
        if plan[-1] >= self.n_layers:
            raise ValueError(f"layer {plan[-1]} out of range (n_layers={self.n_layers})")
        return plan

    def sources(self, plan: list[int]) -> list[int]:
        cached, src, cur = set(plan), [], 0
        for layer in range(self.n_layers):
            cur = layer if layer in cached else cur
            src.append(cur)
        return src

    def new_cache(self, plan: list[int], batch: int, capacity: int) -> Cache:
        shape = (batch, self.n_kv, capacity, self.head_dim)
        return {s: (torch.zeros(shape, dtype=self.dtype), torch.zeros(shape, dtype=self.dtype))
                for s in plan}

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                scale: float) -> torch.Tensor:
        if self.gqa:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale,
                                                  enable_gqa=True)
        rep = self.n_heads // self.n_kv
        return F.scaled_dot_product_attention(q, repeat_kv(k, rep), repeat_kv(v, rep),
                                              is_causal=causal, scale=scale)

    def forward(self, ids: torch.Tensor, pos: int, cache: Cache, src: list[int]) -> torch.Tensor:
        """ids [B, T] at positions pos..pos+T into `cache` (filled up to pos); T > 1 needs pos == 0.
        Returns the logits of the last position, [B, vocab]."""
        b, t = ids.shape
        assert t == 1 or pos == 0, "multi-token steps only into an empty cache"
        end = pos + t
        x = self.embed(ids)
        pos_ids = torch.arange(pos, end).unsqueeze(0).expand(b, t)
        cos, sin = self.rotary(x, pos_ids)
        hd = self.head_dim
        for layer_idx, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(b, t, -1, hd).transpose(1, 2)
            s = src[layer_idx]
            kc, vc = cache[s]
            if s == layer_idx:
                k = attn.k_proj(h).view(b, t, -1, hd).transpose(1, 2)
                v = attn.v_proj(h).view(b, t, -1, hd).transpose(1, 2)
                q, k = apply_rotary_pos_emb(q, k, cos, sin)
                kc[:, :, pos:end] = k
                vc[:, :, pos:end] = v
            else:  # query-only layer: the same RoPE formula as apply_rotary_pos_emb, on q alone
                q = q * cos.unsqueeze(1) + rotate_half(q) * sin.unsqueeze(1)
            o = self._attend(q, kc[:, :, :end], vc[:, :, :end], t > 1, attn.scaling)
            x = x + attn.o_proj(o.transpose(1, 2).reshape(b, t, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.lm_head(self.norm(x[:, -1:, :]))[:, 0, :]

    def reference(self, ids: torch.Tensor, plan: list[int]) -> torch.Tensor:
        """No-cache recomputation of the whole sequence (repeat_kv + causal SDPA over all positions).
        Returns logits of every position, [B, T, vocab]."""
        b, t = ids.shape
        src, rep, hd = self.sources(plan), self.n_heads // self.n_kv, self.head_dim
        x = self.embed(ids)
        cos, sin = self.rotary(x, torch.arange(t).unsqueeze(0).expand(b, t))
        kv: Cache = {}
        for layer_idx, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(b, t, -1, hd).transpose(1, 2)
            k = attn.k_proj(h).view(b, t, -1, hd).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)  # k is dropped unless the layer is cached
            if src[layer_idx] == layer_idx:
                kv[layer_idx] = (k, attn.v_proj(h).view(b, t, -1, hd).transpose(1, 2))
            k, v = kv[src[layer_idx]]
            o = F.scaled_dot_product_attention(q, repeat_kv(k, rep), repeat_kv(v, rep),
                                               is_causal=True, scale=attn.scaling)
            x = x + attn.o_proj(o.transpose(1, 2).reshape(b, t, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.lm_head(self.norm(x))

    def generate(self, ids: torch.Tensor, plan: list[int], n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefill, then n greedy tokens (n-1 decode steps). Returns ([B, n] ids, [B, n, vocab]
        logits: prefill last position, then each decode step)."""
        b, length = ids.shape
        src = self.sources(plan)
        cache = self.new_cache(plan, b, length + max(n, 1))
        logits = [self.forward(ids, 0, cache, src)]
        toks = []
        for step in range(n):
            toks.append(logits[-1].float().argmax(-1))
            if step + 1 < n:
                logits.append(self.forward(toks[-1].unsqueeze(1), length + step, cache, src))
        out_ids = torch.stack(toks, 1) if toks else torch.zeros(b, 0, dtype=torch.long)
        return out_ids, torch.stack(logits, 1)


def _positive(req: dict[str, Any], key: str, minimum: int = 1) -> int:
    val = req.get(key)
    if type(val) is not int or val < minimum:
        raise ValueError(f"'{key}' must be an integer >= {minimum}")
    return val


def handle(m: RoutedLlama, req: dict[str, Any]) -> dict[str, Any]:
    op = req.get("op")
    if op == "decode":
        b, c = _positive(req, "batch"), _positive(req, "context")
        n, w = _positive(req, "steps"), _positive(req, "warmup", 0)
        plan = m.check_plan(req.get("plan"))
        src = m.sources(plan)
        cache = m.new_cache(plan, b, c + w + n)
        for kc, vc in cache.values():
            kc[:, :, :c] = torch.randn(b, m.n_kv, c, m.head_dim, dtype=m.dtype)
            vc[:, :, :c] = torch.randn(b, m.n_kv, c, m.head_dim, dtype=m.dtype)
        tok = ((torch.arange(b) * 7 + 32) % m.vocab).unsqueeze(1)
        pos = c
        for _ in range(w):
            m.forward(tok, pos, cache, src)
            pos += 1
        start = time.perf_counter()
        for _ in range(n):
            m.forward(tok, pos, cache, src)
            pos += 1
        secs = time.perf_counter() - start
        return {"op": "decode", "seconds": secs, "steps": n, "tokens_per_second": b * n / secs}
    if op == "prefill":
        b, length, r = _positive(req, "batch"), _positive(req, "length"), _positive(req, "repeats")
        plan = m.check_plan(req.get("plan"))
        src = m.sources(plan)
        ids = (torch.arange(length).unsqueeze(0) * 31 + torch.arange(b).unsqueeze(1) * 7) % m.vocab
        times = []
        for _ in range(r):
            cache = m.new_cache(plan, b, length)
            start = time.perf_counter()
            m.forward(ids, 0, cache, src)
            times.append(time.perf_counter() - start)
        return {"op": "prefill", "seconds": times}
    if op == "logits":
        toks = req.get("tokens")
        if (not isinstance(toks, list) or not toks or not all(isinstance(s, list) and s for s in toks)
                or len({len(s) for s in toks}) != 1
                or not all(type(i) is int and 0 <= i < m.vocab for s in toks for i in s)):
            raise ValueError("'tokens' must be non-empty equal-length lists of ids in [0, vocab)")
        d = _positive(req, "decode", 0)
        plan = m.check_plan(req.get("plan"))
        out_ids, logits = m.generate(torch.tensor(toks, dtype=torch.long), plan, d)
        return {"op": "logits", "prefill_last": logits[:, 0].float().tolist(),
                "greedy": out_ids.tolist()}
    raise ValueError(f"unknown op {op!r}")


def self_test(m: RoutedLlama) -> bool:
    ok = True
    b, length, n = 2, 20, 5
    ids = (torch.arange(length).unsqueeze(0) * 31 + torch.arange(b).unsqueeze(1) * 7 + 3) % m.vocab

    def check(name: str, got: torch.Tensor, want: torch.Tensor, same_ids: bool, tol: float) -> None:
        nonlocal ok
        diff = (got - want).abs().max().item()
        passed = diff < tol and same_ids  # NaN fails `<`
        ok &= passed
        print(f"{'PASS' if passed else 'FAIL'} {name}: max|diff|={diff:.3g} (tol {tol:g}) "
              f"greedy_ids_match={same_ids}", flush=True)

    def routed_case(r: RoutedLlama, plan: list[int]) -> tuple[torch.Tensor, torch.Tensor, bool]:
        gen, got = r.generate(ids, plan, n + 1)  # n decode steps: logits at positions L-1..L+n-1
        ref = r.reference(torch.cat([ids, gen[:, :n]], 1), plan)[:, length - 1:]
        return got, ref, bool((ref.argmax(-1) == gen).all())

    full = list(range(m.n_layers))
    gen, got = m.generate(ids, full, n + 1)
    seq = torch.cat([ids, gen[:, :n]], 1)
    stock = m.model(input_ids=seq, use_cache=False).logits[:, length - 1:]
    check(f"f32 full plan, cached prefill(B={b}, L={length})+{n} decode vs stock transformers",
          got, stock, bool((stock.argmax(-1) == gen).all()), 1e-3)
    check("f32 full plan, no-cache reference vs stock transformers",
          m.reference(seq, full)[:, length - 1:], stock, True, 1e-3)
    routed = list(range(0, m.n_layers, 2))
    check(f"f32 plan {routed}, cached vs no-cache recomputation", *routed_case(m, routed), 1e-3)
    m64 = RoutedLlama(m.model.to(torch.float64))  # exactness up to rounding
    check("f64 same routed plan, cached vs no-cache recomputation", *routed_case(m64, routed), 1e-9)
    return ok


def load_model(path: str, dtype: torch.dtype) -> Any:
    """A Hugging Face checkpoint directory, or a GGUF file (dequantized by transformers)."""
    p = pathlib.Path(path)
    if p.is_file() and p.suffix == ".gguf":
        model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="Hugging Face checkpoint directory or GGUF file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    ap.add_argument("--self-test", action="store_true", help="run the correctness checks (f32)")
    args = ap.parse_args()
    out = sys.stdout
    sys.stdout = sys.stderr  # only protocol lines may reach the real stdout

    def send(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    torch.set_num_threads(args.threads)
    dtype_name = "f32" if args.self_test else args.dtype
    if args.self_test and args.dtype != "f32":
        print("--self-test runs in f32", file=sys.stderr)
    model = load_model(args.model, DTYPES[dtype_name])
    with torch.inference_mode():
        m = RoutedLlama(model)
        if args.self_test:
            sys.stdout = out
            return 0 if self_test(m) else 1
        send({"ready": True, "torch": torch.__version__, "transformers": transformers.__version__,
              "threads": torch.get_num_threads(), "dtype": dtype_name, "n_layers": m.n_layers,
              "python": platform.python_version()})
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("request must be a JSON object")
                if req.get("op") == "quit":
                    return 0
                send(handle(m, req))
            except Exception as e:  # keep serving after a bad request
                send({"error": f"{type(e).__name__}: {e}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
