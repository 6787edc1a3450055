#!/usr/bin/env python3
"""Cross-implementation fixtures for the Swift safetensors reader/writer.

  st_fixtures.py write DIR
      DIR/all_dtypes.safetensors (written by the real `safetensors` package)
      DIR/expected/index.json    {name: {"dtype", "shape"}, "__metadata__": {...}}
      DIR/expected/NAME.bin      raw little-endian bytes of each tensor
      DIR/expected/rounding_f16.bin, rounding_bf16.bin
                                 rounding_f32 converted by numpy / ml_dtypes
                                 (round to nearest, ties to even)
  st_fixtures.py verify FILE EXPECTED_DIR
      FILE (written by Swift) must hold exactly the tensors, dtypes, shapes,
      bytes and metadata described by EXPECTED_DIR.  Prints "ok N tensors".
  st_fixtures.py write-expected FILE EXPECTED_DIR
      Reverse direction: write EXPECTED_DIR's raw tensors to FILE with the
      safetensors package, so Swift can read a Python-written copy.

Exit codes: 0 ok, 1 verification failed (one line per problem), 2 usage.
"""
import argparse
import json
import os
import sys

import ml_dtypes
import numpy as np
from safetensors import TensorSpec, deserialize, safe_open, serialize_file

# safetensors header dtype -> (numpy dtype, name accepted by TensorSpec)
DTYPES = {
    "F32": (np.dtype("<f4"), "float32"),
    "F16": (np.dtype("<f2"), "float16"),
    "BF16": (np.dtype(ml_dtypes.bfloat16), "bfloat16"),
    "I8": (np.dtype("i1"), "int8"),
    "I16": (np.dtype("<i2"), "int16"),
    "I32": (np.dtype("<i4"), "int32"),
    "I64": (np.dtype("<i8"), "int64"),
    "U8": (np.dtype("u1"), "uint8"),
    "U16": (np.dtype("<u2"), "uint16"),
    "U32": (np.dtype("<u4"), "uint32"),
    "U64": (np.dtype("<u8"), "uint64"),
    "BOOL": (np.dtype("?"), "bool"),
}
METADATA = {"format": "pt", "source": "python"}


def write_safetensors(path, tensors, metadata):
    """tensors: {name: (ST dtype, shape, bytes)}.  Uses the package's raw API
    (TensorSpec), which is how safetensors.numpy.save_file works in 0.8."""
    keep = []  # buffers must outlive serialize_file
    specs = {}
    for name, (dt, shape, data) in tensors.items():
        buf = np.frombuffer(bytearray(data) or bytearray(1), dtype=np.uint8)
        keep.append(buf)
        specs[name] = TensorSpec(dtype=DTYPES[dt][1], shape=list(shape),
                                 data_ptr=buf.ctypes.data, data_len=len(data))
    serialize_file(specs, path, metadata=metadata or None)


def float_edges(dt):
    """24 edge values of a float dtype: +-0, subnormals, +-inf, max/min
    normal, a quiet NaN and ordinary values, as a [4, 6] array."""
    fi = ml_dtypes.finfo(dt) if dt == ml_dtypes.bfloat16 else np.finfo(dt)
    sub_min = fi.smallest_subnormal
    vals = [0.0, -0.0, sub_min, -sub_min, fi.smallest_normal - sub_min,
            np.inf, -np.inf, fi.max, fi.min, fi.smallest_normal,
            -fi.smallest_normal, np.nan, 1.0, -1.0, 0.5, 3.140625, -2.75,
            1e-3, -1e-3, 100.0, 0.1, -0.333, 65504.0 / 3, 7.0]
    with np.errstate(over="ignore", invalid="ignore"):
        return np.array(vals, dtype=np.float64).astype(dt).reshape(4, 6)


def int_edges(dt):
    """15 values incl. the extremes of an int dtype, as a [3, 5] array."""
    ii = np.iinfo(dt)
    vals = [ii.min, ii.max, 0, 1, ii.max - 1, ii.min + 1, ii.max // 2,
            ii.min // 2, 42, 7, ii.max // 3, 100, 2, 3, 5]
    if ii.min < 0:
        vals[2:5] = [0, -1, 1]
    return np.array(vals, dtype=object).astype(dt).reshape(3, 5)


def rounding_values(rng):
    """F32 values (no NaN) exercising F16 and BF16 round-to-nearest-even."""
    out = []
    # F16 normal range: exact ties between adjacent F16 values (even and odd
    # lower neighbour), and the F32 values one ulp either side of each tie.
    h = np.arange(0x0400, 0x7BFF, 37, dtype=np.uint16)  # F16 normal bit patterns
    base = h.view(np.float16).astype(np.float32).view(np.uint32)
    for lo in (base, base + (1 << 13)):  # neighbour with odd/even mantissa
        tie = lo + (1 << 12)
        out += [tie, tie - 1, tie + 1]
    # F16 subnormal range: ties are odd multiples of 2^-25
    k = np.arange(1, 2048, 3, dtype=np.float64)
    out.append((k * 2.0 ** -25).astype(np.float32).view(np.uint32))
    # BF16 ties: low 16 bits 0x8000 (tie), 0x7FFF and 0x8001, even/odd bit 16
    hi = rng.integers(0x0000, 0x7F7F, 400, dtype=np.uint32) << 16
    for low in (0x8000, 0x7FFF, 0x8001, 0x18000):
        out.append(hi + low)
    out.append(np.uint32(0x0000_8000) + np.arange(0, 0x70000, 0x10000, dtype=np.uint32))
    out = np.concatenate(out).astype(np.uint32)
    out = np.concatenate([out, out | 0x8000_0000]).view(np.float32)  # both signs
    special = np.array([
        0.0, -0.0, np.inf, -np.inf,
        65504.0, 65519.996, 65520.0, 65536.0, 70000.0, 1e10, -65520.0,  # F16 overflow
        2.0 ** -24, 2.0 ** -25, 2.0 ** -25 * 1.0000001, 2.0 ** -26, 1e-10,  # F16 underflow
        -2.0 ** -25, 1e-30, -1e-38,
        np.finfo(np.float32).max, -np.finfo(np.float32).max,  # BF16 overflow
        np.finfo(np.float32).smallest_subnormal, 1e-45, 1e-40, 5e-39,  # F32 subnormals
    ], dtype=np.float32)
    normals = np.concatenate([rng.standard_normal(2000),
                              rng.standard_normal(500) * 1e-3,
                              rng.standard_normal(500) * 1e4]).astype(np.float32)
    return np.concatenate([special, out, normals])


def cmd_write(args):
    rng = np.random.default_rng(0)
    arrays = {}
    for dt_name in ("F32", "F16", "BF16"):
        arrays["t_" + dt_name.lower()] = float_edges(DTYPES[dt_name][0])
    for dt_name in ("I8", "I16", "I32", "I64", "U16", "U32", "U64"):
        arrays["t_" + dt_name.lower()] = int_edges(DTYPES[dt_name][0])
    arrays["t_u8"] = np.arange(256, dtype=np.uint8)               # the 1-D tensor
    arrays["t_bool"] = (np.arange(15) % 3 == 0).reshape(3, 5)
    arrays["empty_f32"] = np.zeros((0, 4), dtype=np.float32)     # 0 elements
    rounding = rounding_values(rng)
    arrays["rounding_f32"] = rounding

    by_np = {v[0]: k for k, v in DTYPES.items()}
    tensors = {n: (by_np[a.dtype], a.shape, a.tobytes()) for n, a in arrays.items()}
    os.makedirs(os.path.join(args.dir, "expected"), exist_ok=True)
    write_safetensors(os.path.join(args.dir, "all_dtypes.safetensors"), tensors, METADATA)

    index = {n: {"dtype": dt, "shape": list(shape)} for n, (dt, shape, _) in tensors.items()}
    index["__metadata__"] = METADATA
    exp = os.path.join(args.dir, "expected")
    with open(os.path.join(exp, "index.json"), "w") as f:
        json.dump(index, f, indent=1, sort_keys=True)
    for n, (_, _, data) in tensors.items():
        with open(os.path.join(exp, n + ".bin"), "wb") as f:
            f.write(data)
    with np.errstate(over="ignore"):
        f16 = rounding.astype(np.float16)
        bf16 = rounding.astype(ml_dtypes.bfloat16)
    with open(os.path.join(exp, "rounding_f16.bin"), "wb") as f:
        f.write(f16.astype("<f2").tobytes())
    with open(os.path.join(exp, "rounding_bf16.bin"), "wb") as f:
        f.write(bf16.tobytes())
    print(f"wrote {len(tensors)} tensors ({rounding.size} rounding values) to {args.dir}")
    return 0


def load_expected(exp_dir):
    with open(os.path.join(exp_dir, "index.json")) as f:
        index = json.load(f)
    meta = index.pop("__metadata__", None) or {}
    tensors = {}
    for n, info in index.items():
        with open(os.path.join(exp_dir, n + ".bin"), "rb") as f:
            tensors[n] = (info["dtype"], list(info["shape"]), f.read())
    return tensors, meta


def cmd_verify(args):
    expected, exp_meta = load_expected(args.expected_dir)
    problems = []
    try:
        with open(args.file, "rb") as f:
            loaded = deserialize(f.read())  # validates the whole file
        with safe_open(args.file, framework="np") as f:
            meta = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - any load failure is a finding
        print(f"{args.file}: safetensors cannot load it: {e}")
        return 1
    got = {n: (v["dtype"], list(v["shape"]), bytes(v["data"])) for n, v in loaded}
    for n in sorted(set(expected) - set(got)):
        problems.append(f"missing tensor {n}")
    for n in sorted(set(got) - set(expected)):
        problems.append(f"unexpected tensor {n}")
    for n in sorted(set(got) & set(expected)):
        (gd, gs, gb), (ed, es, eb) = got[n], expected[n]
        if gd != ed:
            problems.append(f"{n}: dtype {gd}, expected {ed}")
        if gs != es:
            problems.append(f"{n}: shape {gs}, expected {es}")
        if gb != eb:
            diff = next((i for i, (a, b) in enumerate(zip(gb, eb)) if a != b), min(len(gb), len(eb)))
            problems.append(f"{n}: bytes differ ({len(gb)} vs {len(eb)} bytes, first at byte {diff})")
    if meta != exp_meta:
        problems.append(f"metadata {meta!r}, expected {exp_meta!r}")
    for p in problems:
        print(p)
    if problems:
        return 1
    print(f"ok {len(got)} tensors")
    return 0


def cmd_write_expected(args):
    tensors, meta = load_expected(args.expected_dir)
    for n, (dt, shape, data) in tensors.items():
        if dt not in DTYPES:
            print(f"{n}: unsupported dtype {dt}")
            return 2
    write_safetensors(args.file, tensors, meta)
    print(f"wrote {len(tensors)} tensors to {args.file}")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("write")
    p.add_argument("dir")
    p.set_defaults(fn=cmd_write)
    for name, fn in (("verify", cmd_verify), ("write-expected", cmd_write_expected)):
        p = sub.add_parser(name)
        p.add_argument("file")
        p.add_argument("expected_dir")
        p.set_defaults(fn=fn)
    args = ap.parse_args()
    if args.cmd != "write" and not os.path.isfile(os.path.join(args.expected_dir, "index.json")):
        print(f"{args.expected_dir}/index.json not found", file=sys.stderr)
        return 2
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
