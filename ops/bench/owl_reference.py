"""luuyin/OWL's own prune_wanda_outlier on CPU torch, for ops/bench/owl.sh.

Runs the authors' code unmodified (lib/ copied from a checkout of luuyin/OWL), patched at
run time only as ../shared/PEERS.md says: a `datasets` stub, get_loaders replaced by the
given calibration token ids, hf_device_map = {}, cuda.synchronize a no-op, and
position_embeddings computed for decoder layers called without them. Perplexity is computed
the way prune's evaluation does: exp(mean NLL of every next token) over the given windows.

    python3 owl_reference.py OWL_LIB_PARENT MODEL_DIR CALIB.npy EVAL.npy SPARSITY M LAMBDA OUT.json
"""
import contextlib
import io
import json
import re
import sys
import time
import types

import numpy as np
import torch
import transformers  # noqa: F401  (imported before the stub: it probes for `datasets`)

torch.set_num_threads(2)
sys.modules["datasets"] = types.ModuleType("datasets")
sys.modules["datasets"].load_dataset = None  # their data.py imports it; get_loaders is replaced below
lib_parent, model_dir, calib_path, eval_path, sparsity, m, lam, out_path = sys.argv[1:]
sys.path.insert(0, lib_parent)
import lib.data  # noqa: E402
import lib.prune_all as owl  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.models.llama import modeling_llama  # noqa: E402

model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
model.eval()
calib = np.load(calib_path)
evaluation = np.load(eval_path)
model.seqlen = calib.shape[1]
model.hf_device_map = {}
torch.cuda.synchronize = lambda *a, **k: None


def get_loaders(name, nsamples=128, seed=0, seqlen=2048, tokenizer=None):
    data = []
    for row in calib[:nsamples]:
        inp = torch.tensor(row, dtype=torch.long).unsqueeze(0)
        tar = inp.clone()
        tar[:, :-1] = -100
        data.append((inp, tar))
    return data, None


lib.data.get_loaders = get_loaders
owl.get_loaders = get_loaders
original_forward = modeling_llama.LlamaDecoderLayer.forward


def forward(self, hidden_states, *args, **kwargs):
    if kwargs.get("position_embeddings") is None:
        positions = kwargs.get("position_ids")
        if positions is None:
            positions = torch.arange(hidden_states.shape[1]).unsqueeze(0)
        kwargs["position_embeddings"] = model.model.rotary_emb(hidden_states, positions)
    return original_forward(self, hidden_states, *args, **kwargs)


modeling_llama.LlamaDecoderLayer.forward = forward


@torch.no_grad()
def perplexity():
    nll, count = 0.0, 0
    for row in evaluation:
        ids = torch.tensor(row, dtype=torch.long).unsqueeze(0)
        logits = model(ids).logits[0, :-1].double()
        nll += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        count += ids.shape[1] - 1
    return float(np.exp(nll / count))


dense = perplexity()
args = types.SimpleNamespace(nsamples=calib.shape[0], seed=0, sparsity_ratio=float(sparsity), Hyper_m=float(m), Lamda=float(lam),
                             use_variant=False, model="smollm2")
log = io.StringIO()
start = time.time()
with contextlib.redirect_stdout(log):
    owl.prune_wanda_outlier(args, model, None, device=torch.device("cpu"))
seconds = time.time() - start
after = log.getvalue().split("after adjustment", 1)[1]
densities = [float(x) for x in re.findall(r"[-+]?\d*\.\d+(?:[eE][-+]?\d+)?|\d+", after.split("]", 1)[0])]
json.dump({"dense": dense, "pruned": perplexity(), "seconds": seconds, "levels": [1 - d for d in densities]}, open(out_path, "w"))
