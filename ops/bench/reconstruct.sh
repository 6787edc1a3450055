#!/usr/bin/env bash
# Recovery with the masks fixed on a real model: SmolLM2-135M-Instruct, calibration 64 × 256
# KJV Genesis–Malachi tokens (sequential unless MODE says), perplexity on 32 × 256 held-out KJV
# Matthew–Revelation tokens. For each pruning (default: Wanda at 50%, 70% and 2:4, and
# SparseGPT at the same) and reconstruction (default none and layer): perplexity, the gap
# closed, (ppl_pruned − ppl_recovered) / (ppl_pruned − ppl_dense), wall time (prune +
# evaluation) on WORKERS (default 2) local workers, and the output digest, which must be
# the same for every worker count.
#   ops/bench/reconstruct.sh [WORKDIR]
#   PRUNINGS="wanda 0.5 unstructured;sparsegpt 0.7 unstructured" RECONSTRUCTS="none;layer" WORKERS="1 2"
#   EXTRA="allocation: owl" (added to every spec)
#   MODE=dense (calibration mode; default sequential), e.g.
#   MODE=dense PRUNINGS="wanda 0.7 unstructured" RECONSTRUCTS="none;layer;{scope: block, epochs: 2}"
set -euo pipefail
dir="$(realpath -m "${1:-/tmp/prune-reconstruct-bench}")"
cd "$(dirname "$0")/../.."
. ops/bench/smollm2-setup.sh
smollm2_work "$dir"

printf "%-10s %-5s %-12s %-8s %-8s %10s %8s %9s %s\n" method level pattern refit workers perplexity closed seconds "out/ digest"
IFS=';' read -ra prunings <<< "${PRUNINGS:-wanda 0.5 unstructured;wanda 0.7 unstructured;wanda 0.5 2:4;sparsegpt 0.5 unstructured;sparsegpt 0.7 unstructured;sparsegpt 0.5 2:4}"
for pruning in "${prunings[@]}"; do
  read -r method level pattern <<< "$pruning"
  plain=""
  IFS=';' read -ra reconstructs <<< "${RECONSTRUCTS:-none;layer}"
  for r in "${reconstructs[@]}"; do
    first=""
    for w in ${WORKERS:-2}; do
      name="$method-$level-${MODE:-sequential}-${pattern/:/-}-$(printf '%s' "$r" | tr -d '{} ' | tr ':,' '=_')-w$w"
      rm -rf "${work:?}/$name"
      {
        echo "model: $work/model"
        echo "output: $work/$name"
        echo "method: $method"
        echo "sparsity: $level"
        echo "pattern: \"$pattern\""
        [ "$r" = none ] || echo "reconstruct: $r"
        [ -z "${EXTRA:-}" ] || echo "$EXTRA"
        echo "calibration: {data: $work/calib.txt, samples: 64, tokens: 256, seed: 0, mode: ${MODE:-sequential}}"
        echo "evaluation: {data: $work/eval.txt, samples: 32, tokens: 256}"
      } > "$work/$name.yaml"
      start=$EPOCHREALTIME
      "$prune" run -q --workers "$w" "$work/$name.yaml" > "$work/$name.log"
      end=$EPOCHREALTIME
      digest=$(out_digest "$work/$name")
      ppl=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['evaluation']['pruned'])" "$work/$name/report.json")
      dense=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['evaluation']['dense'])" "$work/$name/report.json")
      [ "$r" = none ] && [ -z "$plain" ] && plain=$ppl
      closed=$(python3 -c "import sys; p, r, d = (float(x) if x else None for x in sys.argv[1:]); print('–' if p is None or p == r else f'{(p - r) / (p - d):.2f}')" "$plain" "$ppl" "$dense")
      printf "%-10s %-5s %-12s %-8s %-8s %10.3f %8s %9.1f %s\n" "$method" "$level" "$pattern" "$r" "$w" "$ppl" "$closed" "$(python3 -c "print(float('$end') - float('$start'))")" "$digest"
      same_bytes "$digest"
      drop_bulk "$work/$name"
    done
  done
done
