#!/usr/bin/env python3
"""Times the numpy port of IST-DASLab's SparseGPT (Tests/python/sparsegpt_ref.py) on the
inputs PruneBench wrote: add_batch over every batch, then fasterprune at 50%.

  sparsegpt_bench.py DIR ROWS COLS TOKENS BATCHES
"""
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "Tests", "python"))
from sparsegpt_ref import SparseGPT  # noqa: E402


def main():
    d, rows, cols, tokens, batches = sys.argv[1], *map(int, sys.argv[2:6])
    W = np.fromfile(os.path.join(d, "W.f32"), dtype=np.float32).reshape(rows, cols)
    X = [np.fromfile(os.path.join(d, f"X{b}.f32"), dtype=np.float32).reshape(tokens, cols) for b in range(batches)]
    s = SparseGPT(rows, cols)
    t0 = time.perf_counter()
    for x in X:
        s.add_batch(x[None, :, :])
    t1 = time.perf_counter()
    s.fasterprune(W.copy(), 0.5, 0, 0, 128, 0.01)
    t2 = time.perf_counter()
    print(json.dumps({"add_batch_seconds": t1 - t0, "prune_seconds": t2 - t1}))


if __name__ == "__main__":
    main()
