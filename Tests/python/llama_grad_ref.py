#!/usr/bin/env python3
"""Reference whole-model gradients of a Llama-family causal LM with torch autograd
(float64): loss = sum over positions t < T-1 of -log softmax(logits_t)[token_{t+1}]
(Hugging Face conventions: RMSNorm, rotate-half RoPE, grouped-query causal attention,
SwiGLU, tied or separate LM head), gradients with respect to every decoder block's Linear
weights.

  llama_grad_ref.py DIR TOKENS(comma-separated) OUT_PREFIX
Writes OUT_PREFIX.loss.npy and OUT_PREFIX.<weight name>.npy (float32).
"""
import json
import os
import sys

import numpy as np
import torch
from safetensors.numpy import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from subblock_grad_ref import attention_half, backward_and_save, mlp_half, rms  # noqa: E402

LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def main():
    d, tokens, out = sys.argv[1], [int(t) for t in sys.argv[2].split(",")], sys.argv[3]
    cfg = json.load(open(os.path.join(d, "config.json")))
    W = {k: torch.tensor(v.astype(np.float64)) for k, v in load_file(os.path.join(d, "model.safetensors")).items()}
    layers, eps = cfg["num_hidden_layers"], cfg["rms_norm_eps"]
    params = {}
    for b in range(layers):
        for n in LINEARS:
            name = f"model.layers.{b}.{n}.weight"
            params[name] = W[name].clone().requires_grad_(True)
    ids = torch.tensor(tokens)
    x = W["model.embed_tokens.weight"][ids][None]
    for b in range(layers):
        p = f"model.layers.{b}."
        P = lambda n, p=p: params[p + n + ".weight"]
        x = mlp_half(attention_half(x, W, p, P, cfg), W, p, P, cfg)
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    logits = rms(x, W["model.norm.weight"], eps) @ head.T
    backward_and_save(torch.nn.functional.cross_entropy(logits[0, :-1], ids[1:], reduction="sum"), params, out)


if __name__ == "__main__":
    main()
