#!/usr/bin/env bash
# Masked fine-tuning of pruned SmolLM2-135M-Instruct on KJV text (`train:` with `tokens:`):
# METHOD's masks (default wanda; sparsegpt fine-tunes from its updated weights; EXTRA adds
# spec lines, e.g. "reconstruct: layer") at SPARSITY (default 0.5, PATTERN default per_row;
# calibration 64 × 256 Genesis–Malachi tokens), then AdamW (LR, default 1e-4) on EXAMPLES (default 600)
# consecutive 128-token windows of Genesis–Malachi in batches of BATCH (default 8; 2 gradient tasks a
# step), one epoch; perplexity on 32 × 256 held-out Matthew–Revelation
# tokens at the masked start (before) and after, wall time per worker count (WORKERS,
# default 2; several counts must give the same bytes).
#   ops/bench/finetune_smollm2.sh [WORKDIR]
#   EXAMPLES=80 WORKERS="1 2"   (20 steps: the 1-vs-2-worker timing)
set -euo pipefail
dir="$(realpath -m "${1:-/tmp/prune-finetune-bench}")"
cd "$(dirname "$0")/../.."
. ops/bench/smollm2-setup.sh
smollm2_work "$dir"

examples=${EXAMPLES:-600}
printf "%-8s %8s %6s %12s %12s %12s %9s %9s %9s\n" workers examples steps dense before after "s/step" "train s" "job s"
first=""
for w in ${WORKERS:-2}; do
  name="ft-${METHOD:-wanda}-$(echo "${PATTERN:-per_row}" | tr -d ':')-${SPARSITY:-0.5}-$examples-w$w"
  rm -rf "${work:?}/$name"
  cat > "$work/$name.yaml" <<YAML
model: $work/model
output: $work/$name
method: ${METHOD:-wanda}
sparsity: ${SPARSITY:-0.5}
${EXTRA:-}
pattern: '${PATTERN:-per_row}'
calibration: {data: $work/calib.txt, samples: 64, tokens: 256, seed: 0}
evaluation: {data: $work/eval.txt, samples: 32, tokens: 256}
train: {data: $work/calib.txt, tokens: 128, examples: $examples, batch: ${BATCH:-8}, shards: 2, epochs: 1, optimizer: adamw, learning_rate: ${LR:-1e-4}, lr_schedule: cosine, checkpoint_every: 10}
YAML
  start=$EPOCHREALTIME
  "$prune" run -q --workers "$w" "$work/$name.yaml" > "$work/$name.log"
  end=$EPOCHREALTIME
  python3 - "$work/$name" "$w" "$examples" "$start" "$end" <<'PY'
import json, sqlite3, sys
job, w, examples, start, end = sys.argv[1:]
m = json.load(open(f"{job}/out/manifest.json"))
r = json.load(open(f"{job}/report.json"))
t = m["training"]
steps = t["steps_per_epoch"] * len(t["epochs"])
ev = r["evaluation"]
# Training's wall time: from the first train task's start to the last one's end.
db = sqlite3.connect(f"file:{job}/ledger.sqlite?mode=ro", uri=True)
first, last = db.execute("select min(finished_at - seconds), max(finished_at) from tasks where phase = 'train'").fetchone()
train_s = last - first
print(f"{w:<8} {examples:>8} {steps:>6} {ev['dense']:12.3f} {t['start_perplexity']:12.3f} {ev['pruned']:12.3f} {train_s / steps:9.2f} {train_s:9.1f} {float(end) - float(start):9.1f}")
print("  epochs:", [(e["epoch"], round(e["train_loss"], 4), round(e.get("test_perplexity") or 0, 3)) for e in t["epochs"]])
PY
  digest=$(out_digest "$work/$name")
  echo "  out/ $digest"
  same_bytes "$digest"
done
