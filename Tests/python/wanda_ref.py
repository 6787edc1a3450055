#!/usr/bin/env python3
"""numpy port of Wanda's statistic and mask (locuslab/wanda lib/layerwrapper.py
WrappedGPT.add_batch and lib/prune.py prune_wanda), for one linear layer.

Inputs in DIR (raw little-endian float32, row-major): W.f32 (rows x cols) and
X0.f32 ... X{batches-1}.f32 (tokens x cols each; each file is one calibration sample,
as Wanda's hook sees inp[0] of shape [1, seqlen, hidden]).
Outputs in DIR: scaler_row.f32 (cols) and mask.u8 (rows x cols, 1 = kept).

usage: wanda_ref.py DIR ROWS COLS TOKENS BATCHES SPARSITY [N:M]
N:M is in prune-cluster's convention: N kept of every M (Wanda's prune_n = M - N zeros).
"""
import sys

import numpy as np


class WrappedGPT:
    """layerwrapper.py WrappedGPT, float32 throughout like the reference."""

    def __init__(self, rows, columns):
        self.rows = rows
        self.columns = columns
        self.scaler_row = np.zeros((columns,), dtype=np.float32)
        self.nsamples = 0

    def add_batch(self, inp):
        if len(inp.shape) == 2:
            inp = inp[None]
        tmp = inp.shape[0]
        if len(inp.shape) == 3:
            inp = inp.reshape((-1, inp.shape[-1]))
        inp = inp.T
        self.scaler_row *= np.float32(self.nsamples / (self.nsamples + tmp))
        self.nsamples += tmp
        inp = inp.astype(np.float32)
        self.scaler_row += np.linalg.norm(inp, ord=2, axis=1) ** 2 / np.float32(self.nsamples)


def wanda_mask(W, scaler_row, sparsity, prune_n=0, prune_m=0):
    """prune_wanda's selection: returns W_mask (True = pruned)."""
    W_metric = np.abs(W) * np.sqrt(scaler_row.reshape((1, -1)))
    W_mask = np.zeros_like(W_metric, dtype=bool)
    if prune_n != 0:
        # structured n:m sparsity; torch.topk(largest=False) with ties taken in index
        # order (a stable argsort), which is also prune-cluster's tie rule.
        for ii in range(W_metric.shape[1]):
            if ii % prune_m == 0:
                tmp = W_metric[:, ii:(ii + prune_m)].astype(np.float32)
                idx = np.argsort(tmp, axis=1, kind="stable")[:, :prune_n]
                np.put_along_axis(W_mask, ii + idx, True, axis=1)
    else:
        sort_idx = np.argsort(W_metric, axis=-1, kind="stable")
        indices = sort_idx[:, :int(W_metric.shape[1] * sparsity)]
        np.put_along_axis(W_mask, indices, True, axis=1)
    return W_mask


def main():
    d, rows, cols, tokens, batches = sys.argv[1], *map(int, sys.argv[2:6])
    sparsity = float(sys.argv[6])
    prune_n = prune_m = 0
    if len(sys.argv) > 7:
        n, m = map(int, sys.argv[7].split(":"))
        prune_n, prune_m = m - n, m
    W = np.fromfile(f"{d}/W.f32", dtype="<f4").reshape(rows, cols)
    layer = WrappedGPT(rows, cols)
    for b in range(batches):
        layer.add_batch(np.fromfile(f"{d}/X{b}.f32", dtype="<f4").reshape(tokens, cols))
    W_mask = wanda_mask(W, layer.scaler_row, sparsity, prune_n, prune_m)
    layer.scaler_row.astype("<f4").tofile(f"{d}/scaler_row.f32")
    (~W_mask).astype(np.uint8).tofile(f"{d}/mask.u8")


if __name__ == "__main__":
    main()
