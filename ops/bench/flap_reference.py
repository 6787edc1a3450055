"""CASIA-IVA-Lab/FLAP's own prune_flap on CPU torch, MLP channels only, for ops/bench/flap.sh.

Runs the authors' lib/prune.py and lib/layerwrapper.py (copied from a checkout of
CASIA-IVA-Lab/FLAP) with metric WIFV and structure UL-UM (every layer keeps the same number
of channels: what our `method: flap, pattern: channels` does), patched at run time only
where the code cannot run on this model or machine:
- `.cuda()` is a no-op (CPU) and their `datasets` import a stub: get_loaders is replaced by
  the given calibration token ids (as ops/bench/owl_reference.py does);
- decoder layers called without position embeddings get them (transformers 4.53);
- attention heads are left alone: their head code hard-codes a head size of 128 and knows no
  grouped-query attention (SmolLM2: 9 query heads of 64, 3 key/value heads), so o_proj's
  entry in their per-layer dict is a stand-in that is never called (its metric is 0, every
  "head" is kept) and `compress` is called with attn_mask None;
- the mean input they keep in F16 (`baseline_inp.type(torch.half)`) is cast back to F32
  for the bias (their F16 model would compute it in F16; this F32 model cannot multiply the
  two), after their rounding.
The model is loaded with `mlp_bias: true` (zero biases) so their compression has a
down_proj bias to write; the zero gate and up biases are dropped after it (their model has
none). Perplexity is computed as prune's evaluation does: exp(mean NLL of
every next token) over the given windows.

    python3 flap_reference.py FLAP_LIB_PARENT MODEL_DIR CALIB.npy EVAL.npy RATIO OUT.json
"""
import json
import os
import sys
import time
import types

import numpy as np
import torch
import transformers  # noqa: F401  (imported before the stub: it probes for `datasets`)

torch.set_num_threads(2)
sys.modules["datasets"] = types.ModuleType("datasets")
sys.modules["datasets"].load_dataset = None
lib_parent, model_dir, calib_path, eval_path, ratio, out_path = sys.argv[1:]
sys.path.insert(0, lib_parent)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib.prune as flap  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402
from reference_common import give_position_embeddings, perplexity  # noqa: E402

torch.Tensor.cuda = lambda self, *a, **k: self
torch.cuda.empty_cache = lambda *a, **k: None
config = AutoConfig.from_pretrained(model_dir)
config.mlp_bias = True
model = AutoModelForCausalLM.from_pretrained(model_dir, config=config, torch_dtype=torch.float32)
model.eval()
with torch.no_grad():
    for layer in model.model.layers:
        for proj in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
            proj.bias.zero_()
        layer.self_attn.num_heads = config.num_attention_heads
calib = np.load(calib_path)
evaluation = np.load(eval_path)
model.seqlen = calib.shape[1]


def get_loaders(name, nsamples=128, seed=0, seqlen=2048, tokenizer=None):
    data = []
    for row in calib[:nsamples]:
        inp = torch.tensor(row, dtype=torch.long).unsqueeze(0)
        data.append((inp, inp.clone()))
    return data, None


flap.get_loaders = get_loaders
give_position_embeddings(model)

# o_proj's stand-in: 128-wide "heads", never called (so nothing is measured and all are kept).
original_find_layers = flap.find_layers
stand_in = torch.nn.Linear(config.num_attention_heads * 128, 1)


def find_layers(module, layers=[torch.nn.Linear], name=""):
    found = original_find_layers(module, layers, name)
    if "self_attn.o_proj" in found:
        found["self_attn.o_proj"] = stand_in
    return found


flap.find_layers = find_layers
kept = []
original_compress = flap.compress


def compress(layer, attn_mask, mlp_mask, attn_mean_inp, mlp_mean_inp, device, bias=True, unstr=False):
    if mlp_mask is None:
        return
    kept.append(torch.where(mlp_mask)[0].tolist())
    original_compress(layer, None, mlp_mask, None, mlp_mean_inp.float(), device, bias=bias, unstr=unstr)
    # Their model has a down_proj bias only; the zero gate and up biases of ours go.
    layer.mlp.gate_proj.bias = None
    layer.mlp.up_proj.bias = None


flap.compress = compress


dense = perplexity(model, evaluation)
args = types.SimpleNamespace(nsamples=calib.shape[0], seed=0, pruning_ratio=float(ratio), metrics="WIFV", structure="UL-UM",
                             remove_heads=0, unstr=False)
start = time.time()
flap.prune_flap(args, model, None, device=torch.device("cpu"))
seconds = time.time() - start
json.dump({"dense": dense, "pruned": perplexity(model, evaluation), "seconds": seconds, "kept": kept}, open(out_path, "w"))
