#!/usr/bin/env python3
"""Reference values from a llama GGUF, dequantized by pip's `gguf` package.

    gguf_reference.py MODEL.gguf

Prints JSON with float32 bit patterns (exact comparison):
  embed: {token id: row of token_embd.weight} for a few ids
  q, k:  blk.0.attn_q / attn_k, with llama.cpp's q/k permutation undone (the inverse of
         convert_hf_to_gguf.py's `permute`, as transformers' GGUF loader does it), row-major
  v:     blk.0.attn_v, row-major
Exits with status 3 when `gguf` is not installed.
"""
import json
import sys

try:
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
except ImportError as e:  # pragma: no cover
    print(f"missing: {e}", file=sys.stderr)
    sys.exit(3)


def field(reader, key):
    f = reader.fields[key]
    return f.parts[f.data[0]][0]


def tensor(reader, name):
    t = next(t for t in reader.tensors if t.name == name)
    # gguf reports shapes innermost first; the rows are the reversed shape.
    return dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)]).astype(np.float32)


def unpermute(w, n_head):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).ravel().tolist()


def main():
    reader = GGUFReader(sys.argv[1])
    heads = int(field(reader, "llama.attention.head_count"))
    kv_heads = int(field(reader, "llama.attention.head_count_kv"))
    embed = tensor(reader, "token_embd.weight")
    ids = [0, 1, 2, 100, 12345, embed.shape[0] - 1]
    json.dump({
        "embed": {str(i): bits(embed[i]) for i in ids},
        "q": bits(unpermute(tensor(reader, "blk.0.attn_q.weight"), heads)),
        "k": bits(unpermute(tensor(reader, "blk.0.attn_k.weight"), kv_heads)),
        "v": bits(tensor(reader, "blk.0.attn_v.weight")),
    }, sys.stdout)


if __name__ == "__main__":
    main()
