#!/usr/bin/env bash
# OWL side by side with the authors' code: SmolLM2-135M-Instruct, Wanda, 64 × 256
# calibration tokens (KJV Genesis–Malachi, random windows, numpy seed 0) and 32 × 256
# held-out tokens (KJV Matthew–Revelation, consecutive), the same token ids fed to both.
#   ours:   `prune run --workers 2`, uniform and `allocation: {method: owl, m: M, lambda: λ}`
#   theirs: luuyin/OWL lib/prune_all.py prune_wanda_outlier, CPU torch, 2 threads
#           (ops/bench/owl_reference.py; needs a checkout of luuyin/OWL: OWL_REPO=a git
#           directory, e.g. the one `fetch github:luuyin/OWL` gives)
# Prints perplexity and wall time per side, and the largest difference between the
# per-block levels the two chose.
#   OWL_REPO=/path/to/OWL.git ops/bench/owl.sh [WORKDIR]     SPARSITIES="0.7" M=5 LAMBDA=0.08
set -euo pipefail
dir="$(realpath -m "${1:-/tmp/prune-owl-bench}")"
cd "$(dirname "$0")/../.."
. ops/bench/smollm2-setup.sh
smollm2_work "$dir"
m="${M:-5}" lambda="${LAMBDA:-0.08}"
kjv_ids
lib="$work/owl-lib"
reference_lib "${OWL_REPO:-}" "$lib" __init__.py data.py layerwrapper.py prune_all.py sparsegpt.py

printf "%-8s %-22s %10s %9s %s\n" sparsity run perplexity seconds levels
for s in ${SPARSITIES:-0.7}; do
  for a in uniform "{method: owl, m: $m, lambda: $lambda}"; do
    name="ours-$s-$( [ "$a" = uniform ] && echo uniform || echo owl )"
    rm -rf "${work:?}/$name"
    printf "model: %s\noutput: %s\nmethod: wanda\nsparsity: %s\nallocation: %s\ncalibration: {data: %s, mode: sequential}\nevaluation: {data: %s}\n" \
      "$work/model" "$work/$name" "$s" "$a" "$work/calib.npy" "$work/eval.npy" > "$work/$name.yaml"
    start=$EPOCHREALTIME
    "$prune" run -q --workers 2 "$work/$name.yaml" > /dev/null
    end=$EPOCHREALTIME
    python3 - "$work/$name" "$s" "$start" "$end" <<'PY'
import json, sys
job, s, start, end = sys.argv[1:]
ev = json.load(open(f"{job}/report.json"))["evaluation"]
tensors = json.load(open(f"{job}/out/manifest.json"))["tensors"]
levels = [tensors[f"model.layers.{b}.self_attn.q_proj.weight"]["target_sparsity"] for b in range(30)]
json.dump(levels, open(f"{job}.levels.json", "w"))
print(f"{s:<8} {job.rsplit('/', 1)[1]:<22} {ev['pruned']:10.3f} {float(end) - float(start):9.1f} {min(levels):.4f}–{max(levels):.4f} (dense {ev['dense']:.3f})")
PY
  done
  if [ -n "${OWL_REPO:-}" ]; then
    python3 ops/bench/owl_reference.py "$lib" "$work/model" "$work/calib.npy" "$work/eval.npy" "$s" "$m" "$lambda" "$work/theirs-$s.json" > "$work/theirs-$s.log" 2>&1
    python3 - "$work/theirs-$s.json" "$work/ours-$s-owl.levels.json" "$s" <<'PY'
import json, sys
theirs, ours, s = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), sys.argv[3]
diff = max(abs(a - b) for a, b in zip(theirs["levels"], ours))
print(f"{s:<8} {'OWL reference (torch)':<22} {theirs['pruned']:10.3f} {theirs['seconds']:9.1f} {min(theirs['levels']):.4f}–{max(theirs['levels']):.4f} (dense {theirs['dense']:.3f}); levels differ from ours by at most {diff:.2e}")
PY
  fi
done
