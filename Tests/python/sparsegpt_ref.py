#!/usr/bin/env python3
"""numpy port of IST-DASLab/sparsegpt sparsegpt.py (SparseGPT.add_batch and
fasterprune, without the quantizer), float32 throughout like the reference on GPU.

Inputs in DIR (raw little-endian float32, row-major): W.f32 (rows x cols) and
X0.f32 ... X{batches-1}.f32 (tokens x cols each; each file is one calibration sample,
as the reference's hook sees inp[0] of shape [1, seqlen, hidden]).
Outputs in DIR: W_out.f32 (rows x cols), mask.u8 (rows x cols, 1 = kept),
H.f32 (cols x cols, the accumulated Hessian before fasterprune), loss.txt (the
reference's printed 'error', sum of Losses).

usage: sparsegpt_ref.py DIR ROWS COLS TOKENS BATCHES SPARSITY [N:M [BLOCKSIZE [PERCDAMP]]]
N:M is in prune-cluster's convention, N kept of every M (the reference's prunen = M - N
zeros per prunem = M); pass 0:0 for unstructured.
"""
import math
import sys

import numpy as np


class SparseGPT:
    def __init__(self, rows, columns):
        self.rows = rows
        self.columns = columns
        self.H = np.zeros((self.columns, self.columns), dtype=np.float32)
        self.nsamples = 0

    def add_batch(self, inp):
        if len(inp.shape) == 2:
            inp = inp[None]
        tmp = inp.shape[0]
        if len(inp.shape) == 3:
            inp = inp.reshape((-1, inp.shape[-1]))
        inp = inp.T
        self.H *= np.float32(self.nsamples / (self.nsamples + tmp))
        self.nsamples += tmp
        inp = np.float32(math.sqrt(2 / self.nsamples)) * inp.astype(np.float32)
        self.H += inp @ inp.T

    def fasterprune(self, W, sparsity, prunen=0, prunem=0, blocksize=128, percdamp=.01):
        W = W.astype(np.float32).copy()
        H = self.H.copy()
        dead = np.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0

        Losses = np.zeros(self.rows, dtype=np.float32)

        damp = np.float32(percdamp) * np.mean(np.diag(H))
        diag = np.arange(self.columns)
        H[diag, diag] += damp
        L = np.linalg.cholesky(H)
        Linv = np.linalg.inv(L)               # torch.cholesky_inverse(L) = (L Lᵀ)⁻¹
        H = (Linv.T @ Linv).astype(np.float32)
        H = np.linalg.cholesky(H).T           # torch.linalg.cholesky(H, upper=True)
        Hinv = H

        full_mask = np.zeros_like(W, dtype=bool)
        for i1 in range(0, self.columns, blocksize):
            i2 = min(i1 + blocksize, self.columns)
            count = i2 - i1

            W1 = W[:, i1:i2].copy()
            Q1 = np.zeros_like(W1)
            Err1 = np.zeros_like(W1)
            Losses1 = np.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]

            if prunen == 0:
                tmp = W1 ** 2 / (np.diag(Hinv1).reshape((1, -1))) ** 2
                thresh = np.sort(tmp.flatten())[int(tmp.size * sparsity)]
                mask1 = tmp <= thresh
            else:
                mask1 = np.zeros_like(W1, dtype=bool)

            for i in range(count):
                w = W1[:, i]
                d = Hinv1[i, i]

                if prunen != 0 and i % prunem == 0:
                    tmp = W1[:, i:(i + prunem)] ** 2 / (np.diag(Hinv1)[i:(i + prunem)].reshape((1, -1))) ** 2
                    # torch.topk(largest=False): ties in index order (stable argsort)
                    idx = np.argsort(tmp, axis=1, kind="stable")[:, :prunen]
                    np.put_along_axis(mask1, i + idx, True, axis=1)

                q = w.copy()
                q[mask1[:, i]] = 0

                Q1[:, i] = q
                Losses1[:, i] = (w - q) ** 2 / d ** 2

                err1 = (w - q) / d
                W1[:, i:] -= np.outer(err1, Hinv1[i, i:])
                Err1[:, i] = err1

            W[:, i1:i2] = Q1
            Losses += np.sum(Losses1, 1) / 2
            full_mask[:, i1:i2] = mask1

            W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

        return W, full_mask, float(np.sum(Losses))


def main():
    d, rows, cols, tokens, batches = sys.argv[1], *map(int, sys.argv[2:6])
    sparsity = float(sys.argv[6])
    n, m = map(int, sys.argv[7].split(":")) if len(sys.argv) > 7 else (0, 0)
    blocksize = int(sys.argv[8]) if len(sys.argv) > 8 else 128
    percdamp = float(sys.argv[9]) if len(sys.argv) > 9 else 0.01
    W = np.fromfile(f"{d}/W.f32", dtype="<f4").reshape(rows, cols)
    gpt = SparseGPT(rows, cols)
    for b in range(batches):
        gpt.add_batch(np.fromfile(f"{d}/X{b}.f32", dtype="<f4").reshape(tokens, cols))
    gpt.H.astype("<f4").tofile(f"{d}/H.f32")
    prunen, prunem = (m - n, m) if m else (0, 0)
    W_out, mask, loss = gpt.fasterprune(W, sparsity, prunen, prunem, blocksize, percdamp)
    W_out.astype("<f4").tofile(f"{d}/W_out.f32")
    (~mask).astype(np.uint8).tofile(f"{d}/mask.u8")
    with open(f"{d}/loss.txt", "w") as f:
        f.write(repr(loss) + "\n")


if __name__ == "__main__":
    main()
