#!/usr/bin/env python3
"""Write a small Llama-shaped safetensors checkpoint (offline demo default).

  make_demo_model.py DIR
"""
import json
import os
import sys

import numpy as np
from safetensors.numpy import save_file


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    hidden, inter, vocab, layers = 256, 768, 1024, 4
    t = {"model.embed_tokens.weight": rng.normal(0, 0.02, (vocab, hidden))}
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = np.ones(hidden)
        t[p + "post_attention_layernorm.weight"] = np.ones(hidden)
        for n, shape in [("self_attn.q_proj", (hidden, hidden)), ("self_attn.k_proj", (hidden // 4, hidden)),
                         ("self_attn.v_proj", (hidden // 4, hidden)), ("self_attn.o_proj", (hidden, hidden)),
                         ("mlp.gate_proj", (inter, hidden)), ("mlp.up_proj", (inter, hidden)), ("mlp.down_proj", (hidden, inter))]:
            t[p + n + ".weight"] = rng.normal(0, 0.02, shape)
    t["model.norm.weight"] = np.ones(hidden)
    t["lm_head.weight"] = rng.normal(0, 0.02, (vocab, hidden))
    save_file({k: v.astype(np.float32) for k, v in t.items()}, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden, "intermediate_size": inter,
              "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 1, "vocab_size": vocab}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


if __name__ == "__main__":
    main()
