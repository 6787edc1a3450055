#!/usr/bin/env python3
"""Reference gradients of a Llama block's sub-blocks with torch autograd (float64), for
block-wise reconstruction: loss = sum((y - target)^2) with y = x + attention(x) or
y = x + mlp(x) (Hugging Face conventions: RMSNorm, rotate-half RoPE, grouped-query causal
attention, SwiGLU), gradients with respect to the sub-block's Linear weights.

  subblock_grad_ref.py DIR BLOCK PART SAMPLES TOKENS X.npy TARGET.npy OUT_PREFIX
PART: attention | mlp. Writes OUT_PREFIX.loss.npy and OUT_PREFIX.<linear>.npy (float32).
"""
import json
import os
import sys

import numpy as np
import torch
from safetensors.numpy import load_file


def rope(x, theta):
    # x: samples × tokens × heads × hd
    T, hd = x.shape[1], x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = torch.cos(ang)[None, :, None, :], torch.sin(ang)[None, :, None, :]
    a, b = x[..., : hd // 2], x[..., hd // 2:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)


def rms(x, w, eps):
    return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def attention_half(x, W, p, P, cfg):
    """x + attention(x) for block prefix p; P(name) gives the Linear weight to differentiate."""
    S, T, h = x.shape
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd, eps, theta = h // heads, cfg["rms_norm_eps"], cfg.get("rope_theta", 10000.0)
    n = rms(x, W[p + "input_layernorm.weight"], eps)
    q = n @ P("self_attn.q_proj").T + W.get(p + "self_attn.q_proj.bias", 0)
    k = n @ P("self_attn.k_proj").T + W.get(p + "self_attn.k_proj.bias", 0)
    v = n @ P("self_attn.v_proj").T + W.get(p + "self_attn.v_proj.bias", 0)
    q = rope(q.reshape(S, T, heads, hd), theta)
    k = rope(k.reshape(S, T, kv, hd), theta)
    v = v.reshape(S, T, kv, hd)
    rep = heads // kv
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    s = torch.einsum("bthd,bshd->bhts", q, k) / hd ** 0.5
    s = s + torch.triu(torch.full((T, T), float("-inf"), dtype=torch.float64), 1)
    a = torch.einsum("bhts,bshd->bthd", torch.softmax(s, -1), v).reshape(S, T, heads * hd)
    return x + a @ P("self_attn.o_proj").T


def mlp_half(x, W, p, P, cfg):
    """x + mlp(x) for block prefix p (SwiGLU)."""
    n = rms(x, W[p + "post_attention_layernorm.weight"], cfg["rms_norm_eps"])
    return x + (torch.nn.functional.silu(n @ P("mlp.gate_proj").T) * (n @ P("mlp.up_proj").T)) @ P("mlp.down_proj").T


def backward_and_save(loss, params, out):
    """Runs loss.backward() and writes OUT.loss.npy (float64) and OUT.<name>.npy per parameter (float32)."""
    loss.backward()
    np.save(out + ".loss.npy", np.array([loss.item()], dtype=np.float64))
    for name, t in params.items():
        np.save(f"{out}.{name}.npy", t.grad.numpy().astype(np.float32))


def main():
    d, block, part, S, T, xp, tp, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), *sys.argv[6:9]
    cfg = json.load(open(os.path.join(d, "config.json")))
    W = {k: torch.tensor(v.astype(np.float64)) for k, v in load_file(os.path.join(d, "model.safetensors")).items()}
    h = cfg["hidden_size"]
    x = torch.tensor(np.load(xp).astype(np.float64)).reshape(S, T, h)
    target = torch.tensor(np.load(tp).astype(np.float64)).reshape(S, T, h)
    p = f"model.layers.{block}."
    names = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"] if part == "attention" \
        else ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    params = {n: W[p + n + ".weight"].clone().requires_grad_(True) for n in names}
    y = attention_half(x, W, p, lambda n: params[n], cfg) if part == "attention" else mlp_half(x, W, p, lambda n: params[n], cfg)
    backward_and_save(((y - target) ** 2).sum(), params, out)


if __name__ == "__main__":
    main()
