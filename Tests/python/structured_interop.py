#!/usr/bin/env python3
"""What stock transformers makes of a structured job's smaller model.

  structured_interop.py SOURCE OUT IDS LOGITS.npy

Loads OUT/dense with AutoModelForCausalLM (float32, CPU), runs token ids IDS
(comma-separated), writes its logits to LOGITS.npy, and compares them with the SOURCE
model run by transformers with the removed units zeroed (from OUT/manifest.json's kept
units) and, for FLAP, the smaller model's compensation biases (o_proj, down_proj) added:
removing a unit must compute what zeroing it does, up to float rounding (the products
have other lengths). Prints one line, `max |small - zeroed| = X (R of the largest
logit)`, and exits 1 when R > 1e-4.
"""
import json
import os
import sys

import numpy as np
import torch
import transformers


def main():
    source, out, ids, logits_path = sys.argv[1:5]
    transformers.logging.set_verbosity_error()
    tokens = torch.tensor([[int(t) for t in ids.split(",")]])
    small = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(out, "dense"), torch_dtype=torch.float32)
    small.eval()
    with torch.no_grad():
        got = small(tokens).logits[0].numpy()
    np.save(logits_path, got.astype(np.float32))

    manifest = json.load(open(os.path.join(out, "manifest.json")))
    s = manifest["structure"]
    full = transformers.AutoModelForCausalLM.from_pretrained(source, torch_dtype=torch.float32)
    full.eval()
    # One part per kind (heads, then channels); kept lists one group per block and part.
    parts = s.get("parts") or [{"kind": s["kind"], "units_per_block": s["units_per_block"], "width": s["width"]}]
    with torch.no_grad():
        for g, kept in enumerate(s["kept"]):
            b, part = divmod(g, len(parts))
            width = parts[part]["width"]
            keep = torch.zeros(parts[part]["units_per_block"] * width, dtype=torch.bool)
            for u in kept:
                keep[u * width:(u + 1) * width] = True
            layer = full.model.layers[b]
            # FLAP's compensation: the smaller model's bias on the layer reading the units.
            for small_linear, full_linear in [(small.model.layers[b].mlp.down_proj, layer.mlp.down_proj),
                                              (small.model.layers[b].self_attn.o_proj, layer.self_attn.o_proj)]:
                if small_linear.bias is not None and full_linear.bias is None:
                    full_linear.bias = torch.nn.Parameter(small_linear.bias.detach().clone())
            if parts[part]["kind"] == "channels":
                layer.mlp.gate_proj.weight[~keep] = 0
                layer.mlp.up_proj.weight[~keep] = 0
                layer.mlp.down_proj.weight[:, ~keep] = 0
            else:
                layer.self_attn.q_proj.weight[~keep] = 0
                if layer.self_attn.q_proj.bias is not None:
                    layer.self_attn.q_proj.bias[~keep] = 0
                layer.self_attn.o_proj.weight[:, ~keep] = 0
        zeroed = full(tokens).logits[0].numpy()
    diff = float(np.abs(got - zeroed).max())
    relative = diff / max(float(np.abs(zeroed).max()), 1e-30)
    print(f"parameters {sum(p.numel() for p in small.parameters())}; max |small - zeroed| = {diff:.3g} ({relative:.3g} of the largest logit)")
    sys.exit(0 if relative <= 1e-4 else 1)


if __name__ == "__main__":
    main()
