#!/usr/bin/env python3
"""torch autograd reference for prune-cluster's MLP backward pass (MLPGradient): the summed
softmax cross-entropy of an MLP (mlp.json + model.safetensors, as mlp_ref.py makes) on
INPUTS (float32 .npy [rows, input]) with LABELS (comma-separated class indices), and its
gradient with respect to every weight and bias, in float64.

  mlp_grad_ref.py DIR INPUTS LABELS OUT
      OUT.loss.npy: float64 [1]; OUT.<tensor name>.npy: float32 gradient, shaped like it
"""
import json
import os
import sys

import numpy as np
import torch
from safetensors.numpy import load_file


def main(d, inputs, labels, out):
    with open(os.path.join(d, "mlp.json")) as f:
        cfg = json.load(f)
    tensors = {k: torch.tensor(v.astype(np.float64), requires_grad=True) for k, v in load_file(os.path.join(d, "model.safetensors")).items()}
    x = torch.tensor(np.load(inputs).astype(np.float64))
    y = torch.tensor([int(v) for v in labels.split(",")])
    for layer in cfg["layers"]:
        x = x @ tensors[layer["weight"]].T
        if "bias" in layer:
            x = x + tensors[layer["bias"]]
        a = layer.get("activation", "none")
        if a == "relu":
            x = torch.relu(x)
        elif a == "gelu":
            x = torch.nn.functional.gelu(x)
    loss = torch.nn.functional.cross_entropy(x, y, reduction="sum")
    loss.backward()
    np.save(out + ".loss.npy", np.array([loss.item()], dtype=np.float64))
    for name, t in tensors.items():
        np.save(f"{out}.{name}.npy", t.grad.numpy().astype(np.float32))


if __name__ == "__main__":
    main(*sys.argv[1:5])
