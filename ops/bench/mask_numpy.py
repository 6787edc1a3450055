#!/usr/bin/env python3
"""numpy reference for prune-cluster's mask-throughput benchmark.

  mask_numpy.py [--rows 4096] [--cols 11008] [--repeat 5] [--seed 0]

On a rows x cols F32 matrix of seeded standard normals, times (best of
--repeat, time.perf_counter) a plain copy and three 50% magnitude masks:
unstructured (global k-th smallest |w|), per-row (each row's k-th) and 2:4
(two smallest |w| of every 4 consecutive columns).  Tie handling is not
exact; each case does compute the full boolean keep-mask.  Prints one JSON
object: {"copy": {"seconds", "gbps"}, "unstructured": ..., "per_row": ...,
"2:4": ...}, gbps = rows*cols*4 bytes of weights / seconds / 1e9.
"""
import argparse
import json
import sys
import time

import numpy as np


def copy(w, dst):
    np.copyto(dst, w)


def unstructured(w, dst):
    k = w.size // 2
    s = np.abs(w).ravel()
    kth = np.partition(s, k - 1)[k - 1]
    return np.abs(w) > kth


def per_row(w, dst):
    k = w.shape[1] // 2
    a = np.abs(w)
    kth = np.partition(a, k - 1, axis=1)[:, k - 1:k]
    return a > kth


def two_four(w, dst):
    a = np.abs(w).reshape(-1, 4)
    drop = np.argsort(a, axis=1)[:, :2]  # the two smallest of each group
    keep = np.ones(a.shape, dtype=bool)
    np.put_along_axis(keep, drop, False, axis=1)
    return keep.reshape(w.shape)


def best_of(fn, w, dst, repeat):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(w, dst)
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=11008)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.rows < 1 or args.cols < 2 or args.cols % 4 or args.repeat < 1:
        ap.error("need rows >= 1, cols a positive multiple of 4, repeat >= 1")

    w = np.random.default_rng(args.seed).standard_normal((args.rows, args.cols), dtype=np.float32)
    dst = w.copy()  # pages already touched, so copy times no page faults
    nbytes = w.size * 4
    result = {}
    for name, fn in (("copy", copy), ("unstructured", unstructured), ("per_row", per_row), ("2:4", two_four)):
        s = best_of(fn, w, dst, args.repeat)
        result[name] = {"seconds": s, "gbps": nbytes / s / 1e9}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
