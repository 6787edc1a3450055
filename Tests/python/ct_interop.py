#!/usr/bin/env python3
"""Check a job's sparse/ with compressed-tensors and transformers, against dense/.

  ct_interop.py OUT [--transformers]

1. compressed-tensors finds the sparsity config in sparse/config.json
   (ModelCompressor.from_pretrained) and its sparse-bitmask compressor decompresses
   sparse/ to exactly the tensors of dense/, bit for bit (every dtype, BF16 included).
2. With --transformers: AutoModelForCausalLM loads sparse/ (transformers decompresses it
   through compressed-tensors) to the same weights as dense/, bit for bit, with no
   weight left randomly initialised.

Prints one "ok: ..." line per check; exit 1 on the first difference, 2 on usage.
"""
import argparse
import glob
import json
import os
import sys

import torch
from safetensors import safe_open


def dense_tensors(directory):
    out = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.safetensors"))):
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                out[name] = f.get_tensor(name)
    return out


def same_bits(a, b):
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.contiguous().view(view), b.contiguous().view(view))


def fail(message):
    print("FAIL " + message)
    sys.exit(1)


def check_decompress(out):
    from compressed_tensors import ModelCompressor

    sparse_dir, dense_dir = os.path.join(out, "sparse"), os.path.join(out, "dense")
    compressor = ModelCompressor.from_pretrained(sparse_dir)
    if compressor is None or compressor.sparsity_config is None:
        fail("compressed-tensors finds no sparsity config in sparse/config.json")
    if compressor.sparsity_config.format != "sparse-bitmask":
        fail(f"format is {compressor.sparsity_config.format}")
    dense = dense_tensors(dense_dir)
    seen = set()
    for name, tensor in compressor.sparsity_compressor.decompress(sparse_dir):
        if name not in dense:
            fail(f"decompression yields {name}, which dense/ does not hold")
        if not same_bits(tensor, dense[name]):
            fail(f"{name}: decompressed bits differ from dense/")
        seen.add(name)
    missing = set(dense) - seen
    if missing:
        fail(f"decompression misses {sorted(missing)[:3]}")
    config = json.load(open(os.path.join(sparse_dir, "config.json")))
    targets = config["quantization_config"]["sparsity_config"]["targets"]
    print(f"ok: compressed-tensors {compressor.sparsity_config.format}, "
          f"{len(targets)} compressed modules, {len(seen)} tensors bit-identical to dense/")


def check_transformers(out):
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.logging.set_verbosity_error()
    dense = AutoModelForCausalLM.from_pretrained(os.path.join(out, "dense"), torch_dtype="auto")
    sparse, info = AutoModelForCausalLM.from_pretrained(os.path.join(out, "sparse"), torch_dtype="auto",
                                                         output_loading_info=True)
    if info.get("missing_keys") or info.get("unexpected_keys") or info.get("mismatched_keys"):
        fail(f"transformers loading sparse/: {info}")
    a, b = dense.state_dict(), sparse.state_dict()
    if set(a) != set(b):
        fail(f"state dicts differ in names: {sorted(set(a) ^ set(b))[:3]}")
    for name in a:
        if not same_bits(a[name], b[name]):
            fail(f"{name}: transformers loads different weights from sparse/ and dense/")
    print(f"ok: transformers {transformers.__version__} loads sparse/ to the weights of dense/ ({len(a)} tensors)")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--transformers", action="store_true")
    args = p.parse_args()
    check_decompress(args.out)
    if args.transformers:
        check_transformers(args.out)


if __name__ == "__main__":
    main()
