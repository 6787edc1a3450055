#!/usr/bin/env python3
"""numpy port of locuslab/wanda's `prune_wanda` (lib/prune.py, with lib/layerwrapper.py
WrappedGPT), end to end on a Llama-family checkpoint, for timing next to `prune run`
(ops/bench/wanda_e2e.sh). float32 throughout, matrix products on numpy's BLAS.

  wanda_numpy.py MODEL_DIR CALIB OUT_DIR [--samples 64] [--tokens 256] [--seed 0]
                 [--pattern unstructured|N:M] [--sparsity 0.5] [--blocks N]

CALIB is a text file (tokenized with MODEL_DIR/tokenizer.json by the `tokenizers` package,
no special tokens added, as prune-cluster's tokenizer does), or with --ids a .npy of token
ids [N, T]. The windows are drawn exactly as prune-cluster's CalibrationData.windows draws
them: from a text, `samples` windows of `tokens` ids at SplitMix64 starts from the seed;
from id rows, the first `samples` rows cut to `tokens`.

What it does, as the reference: embed the windows; then block by block, run each sample
(batch 1) through the dense block with a hook on every Linear input feeding its
WrappedGPT.add_batch (scaler_row, float32); prune every Linear of the block with
W_metric = |W|·sqrt(scaler_row): unstructured per output row (stable sort, the lowest
⌊cols·s⌋ pruned), N:M per group of M consecutive inputs (the M−N lowest, ties to the lower
index; one vectorized stable sort instead of the reference's Python loop over groups);
zero them; run each sample through the pruned block again to get the next block's inputs.
--blocks N prunes only the first N blocks (quick tests). Finally the whole model is saved
to OUT_DIR/model.safetensors (with config.json), as the reference saves the pruned model.

Prints one JSON line: load_seconds (weights, tokenizer, windows), calibrate_prune_seconds,
save_seconds, total_seconds (from the start of main, after the imports), blocks.
"""
import argparse
import json
import os
import shutil
import sys
import time

import numpy as np
from safetensors.numpy import load_file, save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "Tests", "python"))
from wanda_ref import WrappedGPT  # noqa: E402  (the reference's add_batch, float32)

LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def splitmix(state):
    """prune-cluster's CalibrationData.splitmix: returns (new state, output)."""
    state = (state + GOLDEN) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


def windows(streams, samples, tokens, seed):
    """CalibrationData.windows: random starts in one stream, or the first rows."""
    if len(streams) == 1:
        s = streams[0]
        if len(s) <= tokens:
            raise SystemExit(f"{len(s)} tokens, fewer than one window of {tokens}")
        state = (seed + GOLDEN) & MASK64
        out = []
        for _ in range(samples):
            _, state = splitmix(state)  # `state = splitmix(&state)`: the output becomes the state
            start = state % (len(s) - tokens)
            out.append(s[start:start + tokens])
        return np.array(out, dtype=np.int64)
    if len(streams) < samples:
        raise SystemExit(f"{len(streams)} rows of token ids, {samples} samples asked")
    rows = [np.asarray(r)[:tokens] for r in streams[:samples]]
    if any(len(r) < tokens for r in rows):
        raise SystemExit(f"a row has fewer than {tokens} ids")
    return np.array(rows, dtype=np.int64)


class Block:
    """One decoder block's forward pass on one sequence (tokens × hidden), float32,
    Hugging Face Llama conventions (Tests/python/llama_ref.py in float32)."""

    def __init__(self, W, i, cfg, cos, sin):
        p = f"model.layers.{i}."
        self.p = p
        self.W = W
        self.cfg = cfg
        self.cos, self.sin = cos, sin
        self.in_norm = W[p + "input_layernorm.weight"]
        self.post_norm = W[p + "post_attention_layernorm.weight"]

    def w(self, name):
        return self.W[self.p + name + ".weight"]

    def linear(self, name, x, hook):
        if hook is not None:
            hook(name, x)
        y = x @ self.w(name).T
        b = self.W.get(self.p + name + ".bias")
        return y if b is None else y + b

    def rms(self, x, w):
        var = np.mean(x * x, axis=-1, keepdims=True)
        return w * (x / np.sqrt(var + self.cfg["eps"]))

    def rope(self, x):
        # x: heads × tokens × hd, rotate-half.
        half = x.shape[-1] // 2
        a, b = x[..., :half], x[..., half:]
        return np.concatenate([a * self.cos - b * self.sin, b * self.cos + a * self.sin], axis=-1)

    def forward(self, x, mask, hook=None):
        c = self.cfg
        T = x.shape[0]
        heads, kv, hd = c["heads"], c["kv"], c["hd"]
        n = self.rms(x, self.in_norm)
        q = self.linear("self_attn.q_proj", n, hook)
        k = self.linear("self_attn.k_proj", n, hook)
        v = self.linear("self_attn.v_proj", n, hook)
        q = self.rope(q.reshape(T, heads, hd).transpose(1, 0, 2))          # heads × T × hd
        k = self.rope(k.reshape(T, kv, hd).transpose(1, 0, 2))             # kv × T × hd
        v = v.reshape(T, kv, hd).transpose(1, 0, 2)
        rep = heads // kv
        q = q.reshape(kv, rep * T, hd)                                      # query head h reads kv head h // rep
        s = ((q @ k.transpose(0, 2, 1)) * c["scale"]).reshape(kv, rep, T, T) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = (s.reshape(kv, rep * T, T) @ v).reshape(heads, T, hd).transpose(1, 0, 2).reshape(T, heads * hd)
        x = x + self.linear("self_attn.o_proj", a, hook)
        n = self.rms(x, self.post_norm)
        g = self.linear("mlp.gate_proj", n, hook)
        u = self.linear("mlp.up_proj", n, hook)
        h = (g / (np.float32(1) + np.exp(-g))) * u
        return x + self.linear("mlp.down_proj", h, hook)


def wanda_mask(W, scaler_row, sparsity, prune_n, prune_m):
    """prune_wanda's selection; True = pruned."""
    W_metric = np.abs(W) * np.sqrt(scaler_row.reshape((1, -1)))
    W_mask = np.zeros(W_metric.shape, dtype=bool)
    if prune_n != 0:
        rows, cols = W_metric.shape
        g = W_metric.reshape(rows, cols // prune_m, prune_m)
        idx = np.argsort(g, axis=-1, kind="stable")[..., :prune_n]     # topk(largest=False), ties to the lower index
        np.put_along_axis(W_mask.reshape(rows, cols // prune_m, prune_m), idx, True, axis=-1)
    else:
        sort_idx = np.argsort(W_metric, axis=-1, kind="stable")
        indices = sort_idx[:, :int(W_metric.shape[1] * sparsity)]
        np.put_along_axis(W_mask, indices, True, axis=1)
    return W_mask


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("calib")
    ap.add_argument("out")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pattern", default="unstructured")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--blocks", type=int, default=None)
    ap.add_argument("--ids", action="store_true", help="CALIB is a .npy of token ids [N, T] (also implied by a .npy name)")
    a = ap.parse_args()
    prune_n = prune_m = 0
    sparsity = a.sparsity
    if a.pattern != "unstructured":
        n, m = map(int, a.pattern.split(":"))
        prune_n, prune_m = m - n, m            # the reference's prune_n counts zeros
        sparsity = prune_n / prune_m

    t0 = time.perf_counter()
    cfgj = json.load(open(os.path.join(a.model, "config.json")))
    if cfgj.get("rope_scaling"):
        raise SystemExit("rope_scaling is not supported")
    heads = cfgj["num_attention_heads"]
    hd = cfgj.get("head_dim") or cfgj["hidden_size"] // heads
    cfg = {"heads": heads, "kv": cfgj.get("num_key_value_heads", heads), "hd": hd,
           "eps": np.float32(cfgj.get("rms_norm_eps", 1e-6)), "scale": np.float32(1 / np.sqrt(hd))}
    W = load_file(os.path.join(a.model, "model.safetensors"))
    for k in W:
        if W[k].dtype != np.float32:
            W[k] = W[k].astype(np.float32)
    if a.ids or a.calib.endswith(".npy"):
        streams = list(np.load(a.calib))
    else:
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
        with open(a.calib, encoding="utf-8", newline="") as f:
            streams = [tok.encode(f.read(), add_special_tokens=False).ids]
    ids = windows(streams, a.samples, a.tokens, a.seed)
    t1 = time.perf_counter()

    T = a.tokens
    inv = (1.0 / cfgj.get("rope_theta", 10000.0) ** (np.arange(0, hd, 2) / hd)).astype(np.float32)
    ang = np.arange(T, dtype=np.float32)[:, None] * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)                                  # T × hd/2, broadcast over heads
    mask = np.triu(np.full((T, T), -np.inf, dtype=np.float32), 1)
    inps = W["model.embed_tokens.weight"][ids]                            # samples × T × hidden
    outs = np.empty_like(inps)
    layers = cfgj["num_hidden_layers"] if a.blocks is None else min(a.blocks, cfgj["num_hidden_layers"])
    for i in range(layers):
        block = Block(W, i, cfg, cos, sin)
        wrapped = {name: WrappedGPT(*block.w(name).shape) for name in LINEARS}

        def hook(name, x):
            wrapped[name].add_batch(x)
        for j in range(a.samples):
            outs[j] = block.forward(inps[j], mask, hook)
        for name in LINEARS:
            key = block.p + name + ".weight"
            W_mask = wanda_mask(W[key], wrapped[name].scaler_row, sparsity, prune_n, prune_m)
            W[key][W_mask] = 0
        for j in range(a.samples):
            outs[j] = block.forward(inps[j], mask)
        inps, outs = outs, inps
    t2 = time.perf_counter()

    os.makedirs(a.out, exist_ok=True)
    save_file(W, os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(os.path.join(a.model, "config.json"), os.path.join(a.out, "config.json"))
    t3 = time.perf_counter()
    print(json.dumps({"load_seconds": round(t1 - t0, 3), "calibrate_prune_seconds": round(t2 - t1, 3),
                      "save_seconds": round(t3 - t2, 3), "total_seconds": round(t3 - t0, 3), "blocks": layers}))


if __name__ == "__main__":
    main()
