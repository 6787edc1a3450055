#!/usr/bin/env bash
# Training throughput on Fashion-MNIST (dense training of the 784-256-128-10 MLP from a
# seeded init, one epoch of EXAMPLES examples) for each BATCH:SHARDS in CONFIGS and each
# worker count in WORKERS (0: in process): examples per second over the training tasks
# (first train task handed out to last one done, from the ledger), the bytes compared
# across worker counts, and per step the median worker time of a gradient task and the
# bytes each worker exchanges. EXCHANGES="star none" also runs `exchange: none` (each span
# between checkpoints one task; the bytes must equal the star exchange's), "allgather" its
# spans helped by the idle workers; EPOCHS (default 1) epochs. Then one step of the same MLP and batch, ours against torch
# (CPU, one thread) in the same run: `PruneBench train-step` and train_step_torch.py.
#   ops/bench/train.sh [WORKDIR]
#   CONFIGS="128:2 1024:4" WORKERS="0 1 2" EXAMPLES=20480 STEP_BATCHES="128 512" EXCHANGES="star none allgather" EPOCHS=1
set -euo pipefail
dir="$(realpath -m "${1:-/tmp/prune-train-throughput}")"
cd "$(dirname "$0")/../.."
. ops/bench/smollm2-setup.sh
swift build -c release --product PruneBench 2>&1 | tail -1
mkdir -p "$dir"
[ -f "$dir/init/mlp.json" ] || "$prune" init-mlp "$dir/init" --seed 0 >/dev/null
examples=${EXAMPLES:-20480}
for config in ${CONFIGS:-128:2 1024:4}; do
  batch=${config%%:*}; shards=${config##*:}; first=""
  for exchange in ${EXCHANGES:-star}; do
  for w in ${WORKERS:-0 1 2}; do
    job="$dir/b$batch-s$shards-$exchange-w$w"
    rm -rf "$job"
    printf 'model: %s\noutput: %s\nmethod: magnitude\nsparsity: 0\ntrain: {data: /usr/share/datasets/fashion-mnist, examples: %s, epochs: %s, batch: %s, shards: %s, learning_rate: 0.05, exchange: %s}\n' \
      "$dir/init" "$job" "$examples" "${EPOCHS:-1}" "$batch" "$shards" "$exchange" > "$job.yaml"
    start=$EPOCHREALTIME
    "$prune" run -q --workers "$w" "$job.yaml" > "$job.log"
    end=$EPOCHREALTIME
    python3 - "$job" "$batch" "$shards" "$w" "$start" "$end" "$examples" "$exchange" "${EPOCHS:-1}" <<'PY'
import os, sqlite3, statistics, sys
job, batch, shards, w, start, end, examples, exchange, epochs = sys.argv[1:]
batch, shards, examples = int(batch), int(shards), int(examples)
steps = examples // batch * int(epochs)
wall = float(end) - float(start)
line = f"batch {batch:5} shards {shards} exchange {exchange:9} workers {w}: job {wall:6.2f} s"
ledger = f"{job}/ledger.sqlite"
if os.path.exists(ledger):
    c = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    first, last = c.execute("select min(time), max(time) from events where task like 'train:%'").fetchone()
    span = last - first
    line += f", training {span:6.2f} s = {steps * batch / span:7.0f} examples/s, {1000 * span / steps:6.2f} ms/step"
    grads = [r[0] for r in c.execute("select seconds from tasks where id like 'train:grad:%'")]
    if grads: line += f", gradient task {1000 * statistics.median(grads):5.2f} ms (worker)"
else:
    line += f" = {steps * batch / wall:7.0f} examples/s over the whole job (in process)"
print(line)
PY
    digest=$(cd "$job/out" && find dense sparse -type f | sort | xargs sha256sum | sha256sum | cut -c1-16)
    echo "  out/ $digest"
    if [ -z "$first" ]; then first=$digest; elif [ "$digest" != "$first" ]; then echo "  bytes differ across worker counts or exchanges"; exit 1; fi
  done
  done
done
params=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['totals']['parameters'])" "$(ls -d "$dir"/b*-w*/ | head -1)out/manifest.json")
echo "gradient exchange: each gradient task writes ${params} F32 ($((params * 4)) bytes) and each task reads every shard gradient of the step before"
for b in ${STEP_BATCHES:-128 512}; do
  # PruneBench pins the kernels prune would (BLASThreads.pinnedCore) by running itself again.
  ours=$(.build/release/PruneBench train-step "$dir/step-model" "$b" 300)
  theirs=$(python3 ops/bench/train_step_torch.py "$dir/step-model" "$b" 300)
  python3 - "$b" "$ours" "$theirs" <<'PY'
import json, sys
b, o, t = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(f"one step, batch {b}: prune-cluster {1000 * o['median_step_seconds']:.3f} ms (best {1000 * o['best_step_seconds']:.3f}, {o['blas_core']})   "
      f"torch {t['torch']} {1000 * t['median_step_seconds']:.3f} ms (best {1000 * t['best_step_seconds']:.3f})   ratio {o['median_step_seconds'] / t['median_step_seconds']:.2f} (best {o['best_step_seconds'] / t['best_step_seconds']:.2f})")
PY
done
