#!/usr/bin/env bash
# FLAP side by side with the authors' code: SmolLM2-135M-Instruct, MLP channels (every
# block keeps the same number), 64 × 256 calibration tokens (KJV Genesis–Malachi, random
# windows, numpy seed 0) and 32 × 256 held-out tokens (KJV Matthew–Revelation,
# consecutive), the same token ids fed to both.
#   ours:   `prune run --workers 2`, method flap, pattern channels (dense calibration)
#   theirs: CASIA-IVA-Lab/FLAP lib/prune.py prune_flap, WIFV, UL-UM, CPU torch, 2 threads
#           (ops/bench/flap_reference.py, which says what it patches; needs a checkout of
#           CASIA-IVA-Lab/FLAP: FLAP_REPO=a git directory, e.g. the one
#           `fetch github:CASIA-IVA-Lab/FLAP` gives)
# Prints perplexity and wall time per side, and how many of the kept channels agree.
#   FLAP_REPO=/path/to/FLAP.git ops/bench/flap.sh [WORKDIR]     RATIOS="0.267 0.4"
set -euo pipefail
dir="$(realpath -m "${1:-/tmp/prune-flap-bench}")"
cd "$(dirname "$0")/../.."
. ops/bench/smollm2-setup.sh
smollm2_work "$dir"
kjv_ids
lib="$work/flap-lib"
reference_lib "${FLAP_REPO:-}" "$lib" __init__.py data.py layerwrapper.py prune.py eval.py

printf "%-6s %-24s %10s %9s %s\n" ratio run perplexity seconds kept
for r in ${RATIOS:-0.267}; do
  name="ours-flap-$r"
  rm -rf "${work:?}/$name"
  printf "model: %s\noutput: %s\nmethod: flap\npattern: channels\nsparsity: %s\ncalibration: {data: %s, mode: dense}\nevaluation: {data: %s}\n" \
    "$work/model" "$work/$name" "$r" "$work/calib.npy" "$work/eval.npy" > "$work/$name.yaml"
  start=$EPOCHREALTIME
  "$prune" run -q --workers 2 "$work/$name.yaml" > /dev/null
  end=$EPOCHREALTIME
  python3 - "$work/$name" "$r" "$start" "$end" <<'PY'
import json, sys
job, r, start, end = sys.argv[1:]
ev = json.load(open(f"{job}/report.json"))["evaluation"]
s = json.load(open(f"{job}/out/manifest.json"))["structure"]
json.dump(s["kept"], open(f"{job}.kept.json", "w"))
print(f"{r:<6} {'ours (prune)':<24} {ev['pruned']:10.3f} {float(end) - float(start):9.1f} {s['kept_per_block']} of {s['units_per_block']} a block (dense {ev['dense']:.3f})")
PY
  if [ -n "${FLAP_REPO:-}" ]; then
    python3 ops/bench/flap_reference.py "$lib" "$work/model" "$work/calib.npy" "$work/eval.npy" "$r" "$work/theirs-flap-$r.json" > "$work/theirs-flap-$r.log" 2>&1
    python3 - "$work/theirs-flap-$r.json" "$work/$name.kept.json" "$r" <<'PY'
import json, sys
theirs, ours, r = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), sys.argv[3]
same = [len(set(a) & set(b)) for a, b in zip(theirs["kept"], ours)]
sizes = sorted({len(k) for k in theirs["kept"]})
print(f"{r:<6} {'FLAP reference (torch)':<24} {theirs['pruned']:10.3f} {theirs['seconds']:9.1f} {sizes} a block (dense {theirs['dense']:.3f}); "
      f"kept channels in common with ours: {sum(same)} of {sum(len(k) for k in ours)} ({100 * sum(same) / sum(len(k) for k in ours):.2f}%, worst block {min(s / len(k) for s, k in zip(same, ours)) * 100:.1f}%)")
PY
  fi
done
