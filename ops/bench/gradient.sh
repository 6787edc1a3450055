#!/usr/bin/env bash
# Gradient-based importance on a real model: SmolLM2-135M-Instruct, calibration 64 × 256
# KJV Genesis–Malachi tokens, perplexity on 32 × 256 held-out KJV Matthew–Revelation
# tokens. For each pattern (default per_row and 2:4, at 50%) and method (default wanda,
# taylor, fisher): perplexity, wall time on WORKERS (default 2) local workers and, with
# several worker counts, the bytes compared. Taylor and Fisher take the gradients on the
# dense model (each window's summed next-token cross-entropy, `LlamaGradient`), in shards
# of SAMPLES_PER_TASK windows (default 16: 4 gradient tasks of 424 MB of gradients each).
#   ops/bench/gradient.sh [WORKDIR]
#   PATTERNS="per_row 2:4" METHODS="wanda taylor fisher" WORKERS="1 2" SPARSITY=0.5
#   ALLOCATION=global (one Fisher/Taylor/Wanda threshold over the model; unstructured or per_row)
set -euo pipefail
dir="$(realpath -m "${1:-/tmp/prune-gradient-bench}")"
cd "$(dirname "$0")/../.."
. ops/bench/smollm2-setup.sh
smollm2_work "$dir"

printf "%-8s %-8s %-8s %10s %9s\n" pattern method workers perplexity seconds
for pattern in ${PATTERNS:-per_row 2:4}; do
  for method in ${METHODS:-wanda taylor fisher}; do
    first=""
    for w in ${WORKERS:-2}; do
      name="$method-$(echo "$pattern" | tr -d ':')${ALLOCATION:+-$ALLOCATION}-w$w"
      rm -rf "${work:?}/$name"
      {
        echo "model: $work/model"
        echo "output: $work/$name"
        echo "method: $method"
        echo "sparsity: ${SPARSITY:-0.5}"
        echo "pattern: '$pattern'"
        [ -z "${ALLOCATION:-}" ] || echo "allocation: $ALLOCATION"
        echo "calibration: {data: $work/calib.txt, samples: 64, tokens: 256, seed: 0, samples_per_task: ${SAMPLES_PER_TASK:-16}}"
        echo "evaluation: {data: $work/eval.txt, samples: 32, tokens: 256}"
      } > "$work/$name.yaml"
      start=$EPOCHREALTIME
      "$prune" run -q --workers "$w" "$work/$name.yaml" > "$work/$name.log"
      end=$EPOCHREALTIME
      python3 - "$work/$name" "$pattern" "$method" "$w" "$start" "$end" <<'PY'
import json, sys
job, pattern, method, w, start, end = sys.argv[1:]
ev = json.load(open(f"{job}/report.json"))["evaluation"]
print(f"{pattern:<8} {method:<8} {w:<8} {ev['pruned']:10.3f} {float(end) - float(start):9.1f}  (dense {ev['dense']:.3f})")
PY
      digest=$(out_digest "$work/$name")
      echo "  out/ $digest"
      same_bytes "$digest"
      drop_bulk "$work/$name"
    done
  done
done
