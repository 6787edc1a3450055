#!/usr/bin/env bash
# Per-layer allocation on a real model: SmolLM2-135M-Instruct, Wanda (unstructured: per
# output row), calibration 64 × 256 KJV Genesis–Malachi tokens (sequential), perplexity on
# 32 × 256 held-out KJV Matthew–Revelation tokens. For each sparsity (default 0.5 0.6 0.7)
# and allocation (default uniform, owl, error_budget): perplexity, wall time on WORKERS (default 2) local
# workers, and the levels chosen (min–max over blocks). OWL at M = 5, λ = 0.08 (its defaults).
#   ops/bench/allocation.sh [WORKDIR]
#   SPARSITIES="0.7" ALLOCATIONS="uniform;owl;{method: error_budget, error: absolute}" WORKERS="1 2"
#   (allocations separated by ';'; bytes compared across worker counts)
#   REFINES="none;swap" (each allocation also with `refine: swap`; ';' between values)
set -euo pipefail
dir="$(realpath -m "${1:-/tmp/prune-allocation-bench}")"
cd "$(dirname "$0")/../.."
. ops/bench/smollm2-setup.sh
smollm2_work "$dir"

printf "%-8s %-24s %-8s %10s %9s %s\n" sparsity allocation workers perplexity seconds levels
for s in ${SPARSITIES:-0.5 0.6 0.7}; do
  IFS=';' read -ra allocations <<< "${ALLOCATIONS:-uniform;owl;error_budget}"
  for a in "${allocations[@]}"; do
   IFS=';' read -ra refines <<< "${REFINES:-none}"
   for refine in "${refines[@]}"; do
    first=""
    label=$(printf '%s' "$a" | tr -d '{} ' | tr ':,' '=_' | sed 's/method=//')
    [ "$refine" = none ] || label="$label+$(printf '%s' "$refine" | tr -d '{} ' | tr ':,' '=_' | sed 's/method=//')"
    for w in ${WORKERS:-2}; do
      name="wanda-$s-$label-w$w"
      rm -rf "${work:?}/$name"
      {
        echo "model: $work/model"
        echo "output: $work/$name"
        echo "method: wanda"
        echo "sparsity: $s"
        echo "allocation: $a"
        [ "$refine" = none ] || echo "refine: $refine"
        echo "calibration: {data: $work/calib.txt, samples: 64, tokens: 256, seed: 0, mode: sequential}"
        echo "evaluation: {data: $work/eval.txt, samples: 32, tokens: 256}"
      } > "$work/$name.yaml"
      start=$EPOCHREALTIME
      "$prune" run -q --workers "$w" "$work/$name.yaml" > "$work/$name.log"
      end=$EPOCHREALTIME
      python3 - "$work/$name" "$s" "$label" "$w" "$start" "$end" <<'PY'
import json, sys
job, s, a, w, start, end = sys.argv[1:]
ev = json.load(open(f"{job}/report.json"))["evaluation"]
ppl = ev["pruned"]
levels = sorted({round(t["target_sparsity"], 4) for t in json.load(open(f"{job}/out/manifest.json"))["tensors"].values() if t.get("pruned")})
print(f"{s:<8} {a:<24} {w:<8} {ppl:10.3f} {float(end) - float(start):9.1f} {levels[0]}–{levels[-1]} ({len(levels)} levels; dense {ev['dense']:.3f})")
PY
      digest=$(out_digest "$work/$name")
      echo "  out/ $digest"
      same_bytes "$digest"
      drop_bulk "$work/$name"
    done
   done
  done
done
