#!/usr/bin/env python3
"""Trains a small MLP classifier on Fashion-MNIST with plain numpy and writes it as a
prune-cluster MLP model directory: model.safetensors + mlp.json (see docs/mlp.md).

  ops/make_mlp_model.py OUT [--data DIR] [--hidden 256,128] [--activation relu|gelu]
                            [--epochs 5] [--train-limit N] [--seed 0]

Data: the IDX files of Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist,
gzip'd or not). Inputs are pixels / 255 (what prune's IDX loader feeds the model).
Training: Adam (lr 1e-3, betas 0.9/0.999), minibatches of 128, He-initialised weights,
softmax cross-entropy, all in float32 with a fixed seed and one BLAS thread (so a rerun
writes the same bytes); about 2 s an epoch on one core.
Prints one line: the test-set top-1 accuracy computed here with numpy.
"""
import argparse
import gzip
import json
import os
import sys
import time

# One BLAS thread: the same bytes on every run (threaded sums round differently, and
# training amplifies that), and faster than threads contending on a small machine.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import numpy as np  # noqa: E402  (after the thread settings, which numpy reads at import)
from safetensors.numpy import save_file  # noqa: E402

DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path):
    """An IDX file (optionally gzip'd) as a numpy uint8 array of its declared shape."""
    for candidate in (path, path + ".gz"):
        if os.path.exists(candidate):
            break
    else:
        sys.exit(f"{path}[.gz]: not found (install Debian's dataset-fashion-mnist, or pass --data)")
    with open(candidate, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        sys.exit(f"{candidate}: not an unsigned-byte IDX file")
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
    if data.size != int(np.prod(shape)):
        sys.exit(f"{candidate}: {data.size} bytes of data, header says {shape}")
    return data.reshape(shape)


def load_split(data_dir, split):
    images = read_idx(os.path.join(data_dir, f"{split}-images-idx3-ubyte"))
    labels = read_idx(os.path.join(data_dir, f"{split}-labels-idx1-ubyte"))
    return images.reshape(len(images), -1).astype(np.float32) / 255.0, labels.astype(np.int64)


def erf(x):
    """erf to 1.5e-7 (Abramowitz & Stegun 7.1.26), vectorised: numpy has no erf of its own."""
    s = np.sign(x)
    a = np.abs(x)
    t = 1 / (1 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return (s * (1 - poly * np.exp(-a * a))).astype(np.float32)


def act(name, z):
    if name == "relu":
        return np.maximum(z, 0)
    # GELU, erf form (PyTorch's default): 0.5·z·(1 + erf(z/√2))
    return 0.5 * z * (1 + erf(z / np.float32(np.sqrt(2))))


def act_grad(name, z):
    if name == "relu":
        return (z > 0).astype(np.float32)
    cdf = 0.5 * (1 + erf(z / np.float32(np.sqrt(2))))
    pdf = np.exp(-0.5 * z * z) / np.float32(np.sqrt(2 * np.pi))
    return cdf + z * pdf


def forward(params, x, activation):
    """Logits, and the pre-activations and inputs of every layer (for backprop)."""
    inputs, pre = [], []
    h = x
    for i, (w, b) in enumerate(params):
        inputs.append(h)
        z = h @ w.T + b
        pre.append(z)
        h = act(activation, z) if i < len(params) - 1 else z
    return h, pre, inputs


def train(x, y, sizes, activation, epochs, seed, batch=128, lr=1e-3):
    rng = np.random.default_rng(seed)
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        w = (rng.standard_normal((fan_out, fan_in)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        params.append((w, np.zeros(fan_out, dtype=np.float32)))
    m = [(np.zeros_like(w), np.zeros_like(b)) for w, b in params]
    v = [(np.zeros_like(w), np.zeros_like(b)) for w, b in params]
    beta1, beta2, eps, step = 0.9, 0.999, 1e-8, 0
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch):
            idx = order[start:start + batch]
            logits, pre, inputs = forward(params, x[idx], activation)
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(len(idx)), y[idx]] -= 1
            grad = p / len(idx)
            step += 1
            for i in reversed(range(len(params))):
                if i < len(params) - 1:
                    grad = grad * act_grad(activation, pre[i])
                w, b = params[i]
                gw, gb = grad.T @ inputs[i], grad.sum(axis=0)
                grad = grad @ w
                for j, g in enumerate((gw, gb)):
                    m[i][j][...] = beta1 * m[i][j] + (1 - beta1) * g
                    v[i][j][...] = beta2 * v[i][j] + (1 - beta2) * g * g
                    mhat = m[i][j] / (1 - beta1 ** step)
                    vhat = v[i][j] / (1 - beta2 ** step)
                    params[i][j][...] -= (lr * mhat / (np.sqrt(vhat) + eps)).astype(np.float32)
    return params


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="output directory (model.safetensors + mlp.json)")
    ap.add_argument("--data", default=DEFAULT_DATA, help="directory with the Fashion-MNIST IDX files")
    ap.add_argument("--hidden", default="256,128", help="hidden layer widths, comma-separated")
    ap.add_argument("--activation", choices=["relu", "gelu"], default="relu")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--train-limit", type=int, default=0, help="train on the first N examples only (0: all 60000)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    started = time.time()
    x, y = load_split(a.data, "train")
    if a.train_limit:
        x, y = x[:a.train_limit], y[:a.train_limit]
    tx, ty = load_split(a.data, "t10k")
    hidden = [int(h) for h in a.hidden.split(",") if h]
    sizes = [x.shape[1]] + hidden + [len(CLASSES)]
    params = train(x, y, sizes, a.activation, a.epochs, a.seed)
    accuracy = float((forward(params, tx, a.activation)[0].argmax(axis=1) == ty).mean())

    os.makedirs(a.out, exist_ok=True)
    tensors, layers = {}, []
    for i, (w, b) in enumerate(params):
        name = f"fc{i + 1}"
        tensors[name + ".weight"], tensors[name + ".bias"] = w, b
        layer = {"weight": name + ".weight", "bias": name + ".bias"}
        layer["activation"] = a.activation if i < len(params) - 1 else "none"
        layers.append(layer)
    save_file(tensors, os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
    config = {"architecture": "mlp", "input": sizes[0], "layers": layers, "labels": CLASSES}
    with open(os.path.join(a.out, "mlp.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    print(f"wrote {a.out}: {'-'.join(map(str, sizes))} {a.activation}, trained on {len(x)} examples for {a.epochs} epochs; "
          f"test accuracy {accuracy:.4f} on {len(tx)} examples; {time.time() - started:.1f}s")


if __name__ == "__main__":
    main()
