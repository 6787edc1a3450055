#!/usr/bin/env python3
"""Make a deeper Llama checkpoint out of a real one by repeating its decoder blocks:
block i of the output is block (i mod N) of the input. The weights stay real (their
value distributions, outliers and activation statistics are those of a trained model),
only the depth changes; the scaling benchmarks use it to get a >= 1 GB checkpoint out of
SmolLM2-135M, the largest real Llama-family model this machine has offline.

  deepen_model.py SRC_DIR OUT_DIR --layers 72

SRC_DIR holds config.json and model.safetensors (as `prune import-gguf` writes them);
OUT_DIR gets the same files with num_hidden_layers = --layers (tokenizer files copied).
"""
import argparse
import json
import os
import re
import shutil

from safetensors.numpy import load_file, save_file


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, required=True)
    a = ap.parse_args()
    config = json.load(open(os.path.join(a.src, "config.json")))
    n = config["num_hidden_layers"]
    if a.layers < 1:
        raise SystemExit(f"deepen_model.py: --layers {a.layers} must be at least 1")
    tensors = load_file(os.path.join(a.src, "model.safetensors"))
    layer = re.compile(r"^model\.layers\.(\d+)\.(.*)$")
    out = {}
    for name, value in tensors.items():
        m = layer.match(name)
        if not m:
            out[name] = value
            continue
        i, rest = int(m.group(1)), m.group(2)
        for j in range(i, a.layers, n):
            out[f"model.layers.{j}.{rest}"] = value
    tmp = a.out + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_file(out, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    config["num_hidden_layers"] = a.layers
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    for name in os.listdir(a.src):
        if name.startswith("tokenizer") or name == "special_tokens_map.json":
            shutil.copy(os.path.join(a.src, name), tmp)
    shutil.rmtree(a.out, ignore_errors=True)
    os.rename(tmp, a.out)
    size = os.path.getsize(os.path.join(a.out, "model.safetensors"))
    print(f"{a.out}: {a.layers} blocks (from {n}), {size / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
