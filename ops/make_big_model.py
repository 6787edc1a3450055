#!/usr/bin/env python3
"""Write a large Llama-shaped F32 safetensors checkpoint for the cluster benchmarks,
sharded like Hugging Face checkpoints (model-0000N-of-0000M.safetensors + index).

  make_big_model.py DIR --gb 1.0 [--hidden 2048 --intermediate 5632]
"""
import argparse
import json
import os

import numpy as np
from safetensors.numpy import save_file


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--shard-gb", type=float, default=1.0)
    ap.add_argument("--vocab", type=int, default=8000, help="small by default, so the prunable layers dominate the bytes")
    a = ap.parse_args()
    h, inter, vocab = a.hidden, a.intermediate, a.vocab
    per_layer = (2 * h * h + 2 * (h // 4) * h + 3 * h * inter) * 4
    layers = max(1, round((a.gb * 1e9 - 2 * vocab * h * 4) / per_layer + 0.5))
    rng = np.random.default_rng(0)
    os.makedirs(a.dir, exist_ok=True)
    tensors = [("model.embed_tokens.weight", (vocab, h))]
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors += [(p + "input_layernorm.weight", (h,)), (p + "self_attn.q_proj.weight", (h, h)),
                    (p + "self_attn.k_proj.weight", (h // 4, h)), (p + "self_attn.v_proj.weight", (h // 4, h)),
                    (p + "self_attn.o_proj.weight", (h, h)), (p + "post_attention_layernorm.weight", (h,)),
                    (p + "mlp.gate_proj.weight", (inter, h)), (p + "mlp.up_proj.weight", (inter, h)),
                    (p + "mlp.down_proj.weight", (h, inter))]
    tensors += [("model.norm.weight", (h,)), ("lm_head.weight", (vocab, h))]
    shards, current, size = [], [], 0
    for name, shape in tensors:
        n = int(np.prod(shape)) * 4
        if current and size + n > a.shard_gb * 1e9:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += n
    shards.append(current)
    weight_map, total = {}, 0
    for i, part in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        data = {}
        for name, shape in part:
            data[name] = np.ones(shape, np.float32) if name.endswith("norm.weight") else rng.standard_normal(shape, np.float32) * 0.02
            weight_map[name] = fname
            total += data[name].nbytes
        save_file(data, os.path.join(a.dir, fname), metadata={"format": "pt"})
        del data
    with open(os.path.join(a.dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h, "intermediate_size": inter,
              "num_hidden_layers": layers, "num_attention_heads": h // 64, "num_key_value_heads": h // 256, "vocab_size": vocab}
    with open(os.path.join(a.dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    print(f"{a.dir}: {layers} layers, {total / 1e9:.2f} GB in {len(shards)} shards")


if __name__ == "__main__":
    main()
