#!/usr/bin/env python3
"""torch twin of `PruneBench train-step`: the same MLP (the start weights PruneBench wrote to
DIR), the same batch size, one thread, CPU; times forward + cross-entropy (summed) +
backward + SGD(momentum 0.9) on the mean gradient per step, over STEPS steps after 5 warm-up
steps. Prints JSON: median and best seconds per step.

  train_step_torch.py DIR BATCH STEPS
"""
import json
import sys
import time

import numpy as np
import torch
from safetensors.numpy import load_file

torch.set_num_threads(1)


def main(d, batch, steps):
    t = load_file(f"{d}/model.safetensors")
    layers = []
    for i in (1, 2, 3):
        w, b = t[f"fc{i}.weight"], t[f"fc{i}.bias"]
        lin = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
        layers.append(lin)
    model = torch.nn.Sequential(layers[0], torch.nn.ReLU(), layers[1], torch.nn.ReLU(), layers[2])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    rng = np.random.default_rng(7)
    x = torch.from_numpy(rng.random((batch, 784), dtype=np.float32))
    y = torch.arange(batch) % 10
    times = []
    for i in range(steps + 5):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y, reduction="sum") / batch
        loss.backward()
        opt.step()
        if i >= 5:
            times.append(time.perf_counter() - start)
    times.sort()
    print(json.dumps({"median_step_seconds": times[len(times) // 2], "best_step_seconds": times[0], "torch": torch.__version__}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
