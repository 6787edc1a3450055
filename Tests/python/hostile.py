#!/usr/bin/env python3
"""Write malformed checkpoints for prune-cluster's bad-input tests.

  hostile.py DIR

Each case is DIR/NAME/model.safetensors with a small valid config.json
beside it; DIR/expected.json maps NAME to a lower-case substring the
tool's error line should contain.  Files are assembled by hand (8-byte
little-endian header length, JSON header padded with spaces to a multiple
of 8, data) except the valid ones, written by the safetensors package.

Exit codes: 0 ok, 2 usage error.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np
from safetensors.numpy import save_file

CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
          "hidden_size": 32, "intermediate_size": 16, "num_hidden_layers": 1,
          "num_attention_heads": 4, "vocab_size": 64, "torch_dtype": "float32"}

# case -> substring of the expected error line (compare case-insensitively)
EXPECTED = {
    "truncated": "outside the data region",  # header intact, data cut short
    "header_too_long": "exceeds the limit",
    "length_past_end": "runs past the end",
    "not_json": "not valid json",
    "not_utf8": "utf-8",
    "offsets_out_of_range": "outside the data region",
    "overlapping": "overlap",
    "gap": "gap",
    "unknown_dtype": "unknown dtype",
    "f64_dtype": "f64",
    "shape_mismatch": "needs",
    "nan_weights": "nan",
    "inf_weights": "inf",
    "empty": "no tensors",
    "tiny_file": "truncated",
}


def raw(header, data=b""):
    """A safetensors file from a header (dict or raw bytes) and data bytes."""
    if isinstance(header, dict):
        header = json.dumps(header, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + data


def f32(name, shape, start):
    """Header entry for an F32 tensor at data offset `start`."""
    n = int(np.prod(shape)) * 4
    return name, {"dtype": "F32", "shape": shape, "data_offsets": [start, start + n]}


def valid_bytes():
    """Two well-formed F32 tensors, 64 + 128 bytes of data."""
    hdr = dict([f32("layers.0.a.weight", [4, 4], 0), f32("layers.0.b.weight", [4, 8], 64)])
    return raw(hdr, np.arange(48, dtype="<f4").tobytes())


def cases():
    data64 = np.ones(16, dtype="<f4").tobytes()
    full = valid_bytes()
    yield "truncated", full[: len(full) - 100]                     # cut inside the data
    yield "header_too_long", struct.pack("<Q", 200_000_000) + b'{"a":' + b" " * 27
    yield "length_past_end", struct.pack("<Q", 4096) + full[8:]     # file is ~300 bytes
    yield "not_json", raw(b'{"w": {"dtype": "F32", oops') + data64
    yield "not_utf8", raw(b'{"w\xff\xfe":{"dtype":"F32","shape":[16],"data_offsets":[0,64]}}') + data64
    yield "offsets_out_of_range", raw({"w": {"dtype": "F32", "shape": [16], "data_offsets": [1000, 1064]}}, data64)
    yield "overlapping", raw(dict([f32("a", [16], 0), f32("b", [16], 32)]), data64 + data64[:32])
    yield "gap", raw(dict([f32("a", [16], 0), f32("b", [16], 80)]), data64 + bytes(16) + data64)
    yield "unknown_dtype", raw({"w": {"dtype": "Q9", "shape": [16], "data_offsets": [0, 64]}}, data64)
    yield "f64_dtype", raw({"w": {"dtype": "F64", "shape": [8], "data_offsets": [0, 64]}}, data64)
    yield "shape_mismatch", raw({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 60]}}, data64[:60])
    yield "empty", raw({})
    yield "tiny_file", b"\x08\x00\x00"


def bad_weights(value):
    """A valid F32 [16, 32] weight with one non-finite element."""
    w = np.random.default_rng(0).standard_normal((16, 32)).astype(np.float32)
    w[3, 7] = value
    return {"layers.0.mlp.weight": w}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    args = ap.parse_args()
    written = []
    for name, blob in list(cases()) + [("nan_weights", None), ("inf_weights", None)]:
        d = os.path.join(args.dir, name)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "model.safetensors")
        if blob is None:  # the valid-but-non-finite ones: use the real writer
            save_file(bad_weights(np.nan if name == "nan_weights" else np.inf), path,
                      metadata={"format": "pt"})
        else:
            with open(path, "wb") as f:
                f.write(blob)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(CONFIG, f, indent=1)
        written.append(name)
    with open(os.path.join(args.dir, "expected.json"), "w") as f:
        json.dump({n: EXPECTED[n] for n in written}, f, indent=1)
    print(" ".join(written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
