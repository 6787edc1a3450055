#!/usr/bin/env python3
"""Prefill and decode tokens/s of stock transformers on CPU (float32, one thread), for
side-by-side figures with `prune bench`: the same fixed prompt ids ((i·7919 + 13) mod
vocab), greedy decoding with the key/value cache, best of REPEATS.

  ops/bench/hf_generate.py MODEL_DIR [MODEL_DIR ...] [--prompt 128] [--decode 64] [--repeats 3]
"""
import argparse
import json
import os
import time

import torch
import transformers


def bench(path, prompt, decode, repeats):
    model = transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    model.eval()
    vocab = model.config.vocab_size
    ids = torch.tensor([[(i * 7919 + 13) % vocab for i in range(prompt)]])
    best_prefill = best_decode = 0.0
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = model(ids, use_cache=True)
            best_prefill = max(best_prefill, prompt / (time.perf_counter() - t0))
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            t0 = time.perf_counter()
            for _ in range(decode):
                out = model(token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            best_decode = max(best_decode, decode / (time.perf_counter() - t0))
    params = sum(p.numel() for p in model.parameters())
    return params, best_prefill, best_decode


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, 1 thread, prompt {a.prompt}, decode {a.decode}, best of {a.repeats}")
    print("| model | parameters | prefill tok/s | decode tok/s |\n|---|---:|---:|---:|")
    for m in a.models:
        with open(os.path.join(m, "config.json")) as f:
            config = json.load(f)
        if any(k in config for k in ("intermediate_size_per_layer", "num_attention_heads_per_layer")):
            # Per-layer widths (`allocation: global`) are ours: stock transformers refuses the shapes.
            print(f"| {m} | – | stock transformers cannot load per-layer widths | – |", flush=True)
            continue
        params, prefill, dec = bench(m, a.prompt, a.decode, a.repeats)
        print(f"| {m} | {params} | {prefill:.1f} | {dec:.2f} |", flush=True)


if __name__ == "__main__":
    main()
