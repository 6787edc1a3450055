#!/usr/bin/env python3
"""A numpy reference forward pass for Llama-family checkpoints (Hugging Face
conventions: RMSNorm, rotate-half RoPE, grouped-query attention with a causal mask,
SwiGLU MLP, tied or separate lm_head), and a maker of small random checkpoints.

  llama_ref.py make DIR [--tied] [--seed N] [--bias]   write model.safetensors + config.json
  llama_ref.py forward DIR IDS OUT                     IDS: comma-separated token ids;
                                                       OUT: logits as float32 .npy (float64 math)
"""
import argparse
import json
import os

import numpy as np
from safetensors.numpy import load_file, save_file


def make(d, tied, seed, bias, kv=2):
    rng = np.random.default_rng(seed)
    h, inter, heads, vocab, layers = 32, 48, 4, 64, 2
    hd = h // heads
    t = {"model.embed_tokens.weight": rng.normal(0, 0.5, (vocab, h))}
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = 1 + rng.normal(0, 0.1, h)
        t[p + "post_attention_layernorm.weight"] = 1 + rng.normal(0, 0.1, h)
        t[p + "self_attn.q_proj.weight"] = rng.normal(0, 0.2, (heads * hd, h))
        t[p + "self_attn.k_proj.weight"] = rng.normal(0, 0.2, (kv * hd, h))
        t[p + "self_attn.v_proj.weight"] = rng.normal(0, 0.2, (kv * hd, h))
        t[p + "self_attn.o_proj.weight"] = rng.normal(0, 0.2, (h, heads * hd))
        if bias:
            t[p + "self_attn.q_proj.bias"] = rng.normal(0, 0.1, heads * hd)
            t[p + "self_attn.k_proj.bias"] = rng.normal(0, 0.1, kv * hd)
            t[p + "self_attn.v_proj.bias"] = rng.normal(0, 0.1, kv * hd)
        t[p + "mlp.gate_proj.weight"] = rng.normal(0, 0.2, (inter, h))
        t[p + "mlp.up_proj.weight"] = rng.normal(0, 0.2, (inter, h))
        t[p + "mlp.down_proj.weight"] = rng.normal(0, 0.2, (h, inter))
    t["model.norm.weight"] = 1 + rng.normal(0, 0.1, h)
    if not tied:
        t["lm_head.weight"] = rng.normal(0, 0.2, (vocab, h))
    os.makedirs(d, exist_ok=True)
    save_file({k: v.astype(np.float32) for k, v in t.items()}, os.path.join(d, "model.safetensors"))
    arch = "Qwen2ForCausalLM" if bias else "LlamaForCausalLM"
    cfg = {"architectures": [arch], "model_type": "qwen2" if bias else "llama", "hidden_size": h,
           "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": kv, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "vocab_size": vocab,
           "tie_word_embeddings": tied}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)


def rms(x, w, eps):
    return w * (x / np.sqrt((x * x).mean(-1, keepdims=True) + eps))


def rope(x, theta):
    # x: tokens × heads × hd, rotate-half convention.
    T, _, hd = x.shape
    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    ang = np.arange(T)[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., : hd // 2], x[..., hd // 2:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)


def forward(d, ids):
    cfg = json.load(open(os.path.join(d, "config.json")))
    W = {k: v.astype(np.float64) for k, v in load_file(os.path.join(d, "model.safetensors")).items()}
    h, heads, kv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, eps, theta = h // heads, cfg["rms_norm_eps"], cfg["rope_theta"]
    x = W["model.embed_tokens.weight"][ids]
    T = len(ids)
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        n = rms(x, W[p + "input_layernorm.weight"], eps)
        q = n @ W[p + "self_attn.q_proj.weight"].T + W.get(p + "self_attn.q_proj.bias", 0)
        k = n @ W[p + "self_attn.k_proj.weight"].T + W.get(p + "self_attn.k_proj.bias", 0)
        v = n @ W[p + "self_attn.v_proj.weight"].T + W.get(p + "self_attn.v_proj.bias", 0)
        q = rope(q.reshape(T, heads, hd), theta)
        k = rope(k.reshape(T, kv, hd), theta)
        v = v.reshape(T, kv, hd)
        rep = heads // kv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = np.einsum("hts,shd->thd", s, v).reshape(T, heads * hd)
        x = x + a @ W[p + "self_attn.o_proj.weight"].T
        n = rms(x, W[p + "post_attention_layernorm.weight"], eps)
        g = n @ W[p + "mlp.gate_proj.weight"].T
        u = n @ W[p + "mlp.up_proj.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * u) @ W[p + "mlp.down_proj.weight"].T
    n = rms(x, W["model.norm.weight"], eps)
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    return n @ head.T


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("dir")
    m.add_argument("--tied", action="store_true")
    m.add_argument("--bias", action="store_true")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--kv", type=int, default=2, choices=[1, 2, 4], help="key/value heads (4: multi-head attention)")
    f = sub.add_parser("forward")
    f.add_argument("dir")
    f.add_argument("ids")
    f.add_argument("out")
    a = ap.parse_args()
    if a.cmd == "make":
        make(a.dir, a.tied, a.seed, a.bias, a.kv)
    else:
        ids = [int(x) for x in a.ids.split(",")]
        np.save(a.out, forward(a.dir, ids).astype(np.float32))


if __name__ == "__main__":
    main()
