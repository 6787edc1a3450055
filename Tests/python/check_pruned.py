#!/usr/bin/env python3
"""Check a prune-cluster output directory against its original checkpoint.

  check_pruned.py ORIGINAL OUTDIR

ORIGINAL holds model.safetensors or shards listed in
model.safetensors.index.json ("weight_map").  OUTDIR holds manifest.json,
dense/ (same files and tensor names as ORIGINAL) and sparse/ (the
compressed-tensors "sparse-bitmask" layout).  Everything is loaded with the
`safetensors` package (deserialize; bit patterns compared through unsigned
integer views, so BF16 needs no special handling).

Exit codes: 0 ok, 1 problems found (one line each), 2 usage error.
"""
import argparse
import hashlib
import json
import math
import os
import re
import sys

import numpy as np
from safetensors import deserialize

INDEX = "model.safetensors.index.json"
# element size in bytes of every dtype we may meet; the bit view is uint<8*size>
SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I8": 1, "I16": 2, "I32": 4,
         "I64": 8, "U8": 1, "U16": 2, "U32": 4, "U64": 8, "BOOL": 1,
         "F8_E4M3": 1, "F8_E5M2": 1}
UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}

problems = []


def problem(msg):
    problems.append(msg)


def shard_files(d):
    """(file names, weight_map or None) of a checkpoint directory."""
    idx = os.path.join(d, INDEX)
    if os.path.exists(idx):
        with open(idx) as f:
            wm = json.load(f)["weight_map"]
        return sorted(set(wm.values())), wm
    return ["model.safetensors"], None


def load_dir(d, label):
    """{name: (dtype, shape, bytes)} over all files of a checkpoint dir, plus
    {file: set(names)}."""
    files, wm = shard_files(d)
    tensors, per_file = {}, {}
    for fn in files:
        try:
            with open(os.path.join(d, fn), "rb") as f:
                loaded = deserialize(f.read())
        except Exception as e:  # noqa: BLE001 - report, keep going
            problem(f"{label}/{fn}: safetensors cannot load it: {e}")
            continue
        per_file[fn] = set()
        for name, v in loaded:
            if name in tensors:
                problem(f"{label}: tensor {name} appears in more than one file")
            tensors[name] = (v["dtype"], list(v["shape"]), bytes(v["data"]))
            per_file[fn].add(name)
            if wm is not None and wm.get(name) != fn:
                problem(f"{label}/{INDEX}: {name} is in {fn} but weight_map says {wm.get(name)}")
    if wm is not None:
        for name in sorted(set(wm) - set(tensors)):
            problem(f"{label}/{INDEX}: weight_map lists {name}, found in no file")
    return tensors, per_file


def bits(dtype, shape, data):
    """Unsigned-integer view of a tensor's bit patterns, as [rows, cols]."""
    a = np.frombuffer(data, dtype=np.dtype(UINT[SIZES[dtype]]).newbyteorder("<"))
    cols = shape[-1] if shape else 1
    return a.reshape(-1, cols) if cols else a.reshape(len(a), 0)


def check_pruned_tensor(name, e, d_bits, o_bits):
    """Checks of one pruned tensor; d_bits/o_bits are [rows, cols] views."""
    n = d_bits.size
    rows, cols = d_bits.shape
    zero = d_bits == 0
    zeros = int(zero.sum())
    if e.get("elements") != n:
        problem(f"{name}: manifest elements {e.get('elements')}, tensor has {n}")
    if e.get("zeros") != zeros:
        problem(f"{name}: manifest zeros {e.get('zeros')}, found {zeros} all-zero elements")
    if n and abs(e.get("achieved_sparsity", -1) - zeros / n) > 1e-12:
        problem(f"{name}: achieved_sparsity {e.get('achieved_sparsity')} != zeros/elements {zeros / n}")
    changed = d_bits != o_bits
    if np.any(changed & ~zero):
        i = int(np.flatnonzero(changed & ~zero)[0])
        problem(f"{name}: element {i} differs from the original and is not +0")
    n_changed = int(changed.sum())
    masked, target = e.get("masked", -1), e.get("target_sparsity", 0.0)
    if n_changed > masked:
        problem(f"{name}: {n_changed} elements became zero but manifest masked is {masked}")
    if masked > zeros:
        problem(f"{name}: masked {masked} exceeds the {zeros} zeros in the tensor")
    pattern = e.get("pattern")
    m = re.fullmatch(r"(\d+):(\d+)", str(pattern))
    if pattern == "unstructured":
        if masked < math.floor(target * n):
            problem(f"{name}: masked {masked} < floor(target {target} * {n})")
    elif pattern == "per_row":
        need = math.floor(cols * target)
        bad = np.flatnonzero(zero.sum(axis=1) < need)
        if bad.size:
            problem(f"{name}: {bad.size} rows have fewer than {need} zeros (first row {bad[0]})")
    elif m:
        keep, group = int(m.group(1)), int(m.group(2))
        full = cols // group * group
        nz = (~zero[:, :full]).reshape(rows, full // group, group).sum(axis=2)
        if np.any(nz > keep):
            r, g = np.argwhere(nz > keep)[0]
            problem(f"{name}: row {r} group {g} has {nz[r, g]} nonzeros, {pattern} allows {keep}")
        if full < cols and np.any((~zero[:, full:]).sum(axis=1) > keep):
            problem(f"{name}: a trailing partial group has more than {keep} nonzeros")
    elif pattern in ("rows_l1", "rows_l2"):
        zero_rows = zero.all(axis=1)
        touched = changed.any(axis=1)
        if np.any(touched & ~zero_rows):
            problem(f"{name}: row {int(np.flatnonzero(touched & ~zero_rows)[0])} was pruned but is not all zero")
        if cols and masked % cols:
            problem(f"{name}: masked {masked} is not a whole number of rows of {cols}")
        if int(zero_rows.sum()) < math.floor(rows * target):
            problem(f"{name}: {int(zero_rows.sum())} all-zero rows < floor({rows} * {target})")
    else:
        problem(f"{name}: unknown pattern {pattern!r}")
    return zeros


def rebuild_sparse(name, sparse, dtype, shape):
    """Rebuild a pruned tensor X.weight from X.bitmask/.compressed/.row_offsets/.shape
    and return its bytes (or None after reporting a problem)."""
    parts = {}
    for suffix, want in (("bitmask", "U8"), ("compressed", dtype), ("row_offsets", "I64"), ("shape", "I64")):
        t = sparse.get(f"{name}.{suffix}")
        if t is None:
            problem(f"sparse/: {name}.{suffix} missing")
            return None
        if t[0] != want:
            problem(f"sparse/: {name}.{suffix} has dtype {t[0]}, expected {want}")
            return None
        parts[suffix] = t
    cols = shape[-1] if shape else 1
    rows = math.prod(shape) // cols if cols else 0
    sh = np.frombuffer(parts["shape"][2], dtype="<i8").tolist()
    if sh != shape:
        problem(f"sparse/: {name}.shape is {sh}, dense shape is {shape}")
        return None
    if parts["bitmask"][1] != [rows, (cols + 7) // 8]:
        problem(f"sparse/: {name}.bitmask shape {parts['bitmask'][1]}, expected {[rows, (cols + 7) // 8]}")
        return None
    packed = np.frombuffer(parts["bitmask"][2], dtype=np.uint8).reshape(rows, -1)
    allbits = np.unpackbits(packed, axis=1, bitorder="little").astype(bool)
    if np.any(allbits[:, cols:]):
        problem(f"sparse/: {name}.bitmask has padding bits set past column {cols}")
    mask = allbits[:, :cols]
    per_row = mask.sum(axis=1)
    want_off = np.concatenate([[0], np.cumsum(per_row)[:-1]]).astype(np.int64) if rows else np.zeros(0, np.int64)
    offs = np.frombuffer(parts["row_offsets"][2], dtype="<i8")
    if parts["row_offsets"][1] != [rows] or not np.array_equal(offs, want_off):
        problem(f"sparse/: {name}.row_offsets {parts['row_offsets'][1]} disagree with the bitmask row counts")
    comp = parts["compressed"]
    values = np.frombuffer(comp[2], dtype=UINT[SIZES[dtype]])
    if len(comp[1]) != 1 or values.size != int(mask.sum()):
        problem(f"sparse/: {name}.compressed shape {comp[1]} but the bitmask marks {int(mask.sum())} values")
        return None
    out = np.zeros(mask.shape, dtype=values.dtype)
    out[mask] = values  # boolean assignment fills in row-major order
    return out.tobytes()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("original")
    ap.add_argument("outdir")
    args = ap.parse_args()
    for d in (args.original, args.outdir):
        if not os.path.isdir(d):
            print(f"{d}: not a directory", file=sys.stderr)
            return 2

    try:
        with open(os.path.join(args.outdir, "manifest.json")) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        print(f"manifest.json: cannot read it: {e}")
        return 1
    if manifest.get("format") != "prune-cluster/manifest" or manifest.get("version") != 1:
        problem(f"manifest: format/version {manifest.get('format')!r}/{manifest.get('version')!r}")
    entries = manifest.get("tensors", {})
    tot = manifest.get("totals", {})
    ratio = tot.get("sparse_bytes", 0) / tot["dense_bytes"] if tot.get("dense_bytes") else None
    if ratio is not None and abs(tot.get("sparse_to_dense_ratio", -1) - ratio) > 1e-6 * max(ratio, 1e-12):
        problem(f"manifest: sparse_to_dense_ratio {tot.get('sparse_to_dense_ratio')} != sparse_bytes/dense_bytes")

    orig, orig_files = load_dir(args.original, "original")
    dense_dir = os.path.join(args.outdir, "dense")
    dense, dense_files = load_dir(dense_dir, "dense")
    if shard_files(args.original)[1] is not None and shard_files(dense_dir)[1] is None:
        problem(f"dense/: {INDEX} missing (original is sharded)")
    if {f: sorted(n) for f, n in orig_files.items()} != {f: sorted(n) for f, n in dense_files.items()}:
        problem(f"dense/: files or tensor names per file differ from the original ({sorted(dense_files)})")
    for n in sorted(set(orig) - set(dense)):
        problem(f"dense/: tensor {n} missing")
    for n in sorted(set(dense) - set(orig)):
        problem(f"dense/: unexpected tensor {n}")
    for n in sorted(set(orig) - set(entries)):
        problem(f"manifest: original tensor {n} is not listed")
    for n in sorted(set(entries) - set(orig)):
        problem(f"manifest: lists {n}, which is not in the original")

    n_pruned = total_zeros = 0
    pruned_names = set()
    for name in sorted(set(orig) & set(dense)):
        (od, osh, ob), (dd, dsh, db) = orig[name], dense[name]
        if (od, osh) != (dd, dsh):
            problem(f"{name}: dense/ has {dd} {dsh}, original {od} {osh}")
            continue
        e = entries.get(name)
        if e is None:
            continue
        if e.get("dtype") != dd or list(e.get("shape", [])) != dsh:
            problem(f"{name}: manifest says {e.get('dtype')} {e.get('shape')}, tensor is {dd} {dsh}")
        if "sha256_dense" in e and hashlib.sha256(db).hexdigest() != e["sha256_dense"]:
            problem(f"{name}: sha256 of dense/ bytes != manifest sha256_dense")
        if not e.get("pruned"):
            if db != ob:
                problem(f"{name}: not pruned but its bytes differ from the original")
            continue
        if "sha256_dense" not in e:
            problem(f"{name}: manifest has no sha256_dense")
        if dd not in SIZES:
            problem(f"{name}: cannot check dtype {dd}")
            continue
        n_pruned += 1
        pruned_names.add(name)
        total_zeros += check_pruned_tensor(name, e, bits(dd, dsh, db), bits(od, osh, ob))

    # sparse/: same file names as dense/, rebuilds every pruned tensor exactly
    sparse_dir = os.path.join(args.outdir, "sparse")
    sparse, sparse_files = load_dir(sparse_dir, "sparse")
    if sorted(sparse_files) != sorted(dense_files):
        problem(f"sparse/: files {sorted(sparse_files)} differ from dense/ {sorted(dense_files)}")
    if shard_files(args.original)[1] is not None and shard_files(sparse_dir)[1] is None:
        problem(f"sparse/: {INDEX} missing (original is sharded)")
    expected_names = set()
    for name, (dd, dsh, db) in sorted(dense.items()):
        if name in pruned_names and name.endswith(".weight"):
            # compressed-tensors names the parts after the module: X.weight -> X.bitmask, ...
            prefix = name[: -len(".weight")]
            expected_names |= {f"{prefix}.{s}" for s in ("bitmask", "compressed", "row_offsets", "shape")}
            rebuilt = rebuild_sparse(prefix, sparse, dd, dsh)
            if rebuilt is not None and rebuilt != db:
                diff = int(np.flatnonzero(bits(dd, dsh, rebuilt).ravel() != bits(dd, dsh, db).ravel())[0])
                problem(f"sparse/: {name} rebuilt from the bitmask differs from dense/ at element {diff}")
        else:
            expected_names.add(name)
            if name in sparse and sparse[name] != (dd, dsh, db):
                problem(f"sparse/: {name}, stored as it is, differs from dense/")
    for n in sorted(expected_names - set(sparse)):
        if n in dense:  # pruned components already reported by rebuild_sparse
            problem(f"sparse/: tensor {n} missing")
    for n in sorted(set(sparse) - expected_names):
        problem(f"sparse/: unexpected tensor {n}")

    for p in problems:
        print(p)
    if problems:
        return 1
    print(f"ok: {n_pruned} pruned tensors, {total_zeros} zeros checked, sparse/ rebuilds dense/ bit-exactly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
