#!/usr/bin/env bash
# SparseGPT on one layer, ours (release, one BLAS thread) next to the numpy port of the
# reference (Tests/python/sparsegpt_ref.py), same inputs, same run: 128 calibration
# samples × 512 tokens (the issue's setting). 576×1536 always; 4096×11008 with --big;
# SHAPES="576 576;1536 576;576 1536" for SmolLM2's layer shapes (rows cols).
# Also times `reconstruct: layer`'s exact re-fit of the same layer under SparseGPT's 50% mask,
# against the reference's SparseGPT update (fasterprune) in the same run.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
swift build -c release --product PruneBench 2>&1 | tail -1
export OPENBLAS_NUM_THREADS=1
IFS=';' read -ra shapes <<< "${SHAPES:-576 1536}"
[ "${1:-}" = "--big" ] && shapes+=("4096 11008")
for shape in "${shapes[@]}"; do
  set -- $shape
  dir=$(mktemp -d)
  ours=$(.build/release/PruneBench sparsegpt "$dir" "$1" "$2" 512 128)
  theirs=$(python3 ops/bench/sparsegpt_bench.py "$dir" "$1" "$2" 512 128)
  rm -rf "$dir"
  python3 - "$1x$2" "$ours" "$theirs" <<'PY'
import json, sys
o, t = json.loads(sys.argv[2]), json.loads(sys.argv[3])
for k in ["add_batch_seconds", "prune_seconds"]:
    print(f"{sys.argv[1]} {k:18} prune-cluster {o[k]:8.3f} s   numpy port {t[k]:8.3f} s   ratio {o[k] / t[k]:.2f}")
tot_o, tot_t = o["add_batch_seconds"] + o["prune_seconds"], t["add_batch_seconds"] + t["prune_seconds"]
print(f"{sys.argv[1]} total              prune-cluster {tot_o:8.3f} s   numpy port {tot_t:8.3f} s   ratio {tot_o / tot_t:.2f}")
print(f"{sys.argv[1]} layer-wise re-fit  prune-cluster {o['refit_seconds']:8.3f} s   numpy port's SparseGPT update {t['prune_seconds']:8.3f} s   ratio {o['refit_seconds'] / t['prune_seconds']:.2f}"
      f"   (error {o['sparsegpt_error']:.4g} after SparseGPT, {o['refit_error']:.4g} re-fit)")
PY
done
