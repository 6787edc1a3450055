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
import os
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib.data  # noqa: E402
import lib.prune_all as owl  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from reference_common import give_position_embeddings, perplexity  # noqa: E402

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
give_position_embeddings(model)


dense = perplexity(model, evaluation)
args = types.SimpleNamespace(nsamples=calib.shape[0], seed=0, sparsity_ratio=float(sparsity), Hyper_m=float(m), Lamda=float(lam),
                             use_variant=False, model="smollm2")
log = io.StringIO()
start = time.time()
with contextlib.redirect_stdout(log):
    owl.prune_wanda_outlier(args, model, None, device=torch.device("cpu"))
seconds = time.time() - start
after = log.getvalue().split("after adjustment", 1)[1]
densities = [float(x) for x in re.findall(r"[-+]?\d*\.\d+(?:[eE][-+]?\d+)?|\d+", after.split("]", 1)[0])]
json.dump({"dense": dense, "pruned": perplexity(model, evaluation), "seconds": seconds, "levels": [1 - d for d in densities]}, open(out_path, "w"))
