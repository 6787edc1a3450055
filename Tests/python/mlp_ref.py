#!/usr/bin/env python3
"""A numpy reference forward pass for prune-cluster's MLP classifiers (mlp.json +
model.safetensors, see docs/mlp.md), and a maker of small random ones.

  mlp_ref.py make DIR [--activation relu|gelu] [--seed N] [--dtype f32|f16|bf16] [--rows N]
      write model.safetensors + mlp.json (input 20, layers 32 → 24 → 7, the middle layer
      without a bias) and inputs.npy (float32 [rows, 20])
  mlp_ref.py forward DIR INPUTS OUT
      OUT: logits as float32 .npy (float64 math); OUT with .layerK.npy for K = 0, 1, ...:
      the input of Linear layer K (what a LinearInputHook sees)

GELU is the exact erf form, PyTorch's default: 0.5·x·(1 + erf(x/√2)).
"""
import argparse
import json
import math
import os

import ml_dtypes
import numpy as np
from safetensors.numpy import load_file, save_file

DTYPES = {"f32": np.float32, "f16": np.float16, "bf16": ml_dtypes.bfloat16}


def make(d, activation, seed, dtype, rows):
    rng = np.random.default_rng(seed)
    sizes = [20, 32, 24, 7]
    tensors, layers = {}, []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        name = f"net.{i}"
        tensors[name + ".weight"] = rng.normal(0, 1 / math.sqrt(fan_in), (fan_out, fan_in))
        layer = {"weight": name + ".weight"}
        if i != 1:
            tensors[name + ".bias"] = rng.normal(0, 0.5, fan_out)
            layer["bias"] = name + ".bias"
        if i < len(sizes) - 2:
            layer["activation"] = activation
        layers.append(layer)
    os.makedirs(d, exist_ok=True)
    save_file({k: v.astype(DTYPES[dtype]) for k, v in tensors.items()}, os.path.join(d, "model.safetensors"))
    with open(os.path.join(d, "mlp.json"), "w") as f:
        json.dump({"architecture": "mlp", "input": sizes[0], "layers": layers}, f)
    np.save(os.path.join(d, "inputs.npy"), rng.normal(0, 1.5, (rows, sizes[0])).astype(np.float32))


def act(name, x):
    if name == "relu":
        return np.maximum(x, 0)
    if name == "gelu":
        return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    assert name == "none", name
    return x


def forward(d, inputs, out):
    with open(os.path.join(d, "mlp.json")) as f:
        cfg = json.load(f)
    t = {k: v.astype(np.float64) for k, v in load_file(os.path.join(d, "model.safetensors")).items()}
    x = np.load(inputs).astype(np.float64)
    for k, layer in enumerate(cfg["layers"]):
        np.save(f"{out[:-4]}.layer{k}.npy", x.astype(np.float32))
        x = x @ t[layer["weight"]].T
        if layer.get("bias"):
            x = x + t[layer["bias"]]
        x = act(layer.get("activation") or "none", x)
    np.save(out, x.astype(np.float32))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("dir")
    m.add_argument("--activation", choices=["relu", "gelu"], default="relu")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    m.add_argument("--rows", type=int, default=37)
    f = sub.add_parser("forward")
    f.add_argument("dir")
    f.add_argument("inputs")
    f.add_argument("out")
    a = ap.parse_args()
    if a.cmd == "make":
        make(a.dir, a.activation, a.seed, a.dtype, a.rows)
    else:
        forward(a.dir, a.inputs, a.out)
