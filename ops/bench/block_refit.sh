#!/usr/bin/env bash
# Block-wise reconstruction's cost per block per epoch on a real model, 1 vs 2 workers:
# SmolLM2-135M-Instruct, Wanda at 70%, calibration 64 × 256 KJV tokens, the first BLOCKS
# (default 10) decoder blocks pruned (the rest kept dense, so a run takes minutes), the
# default `reconstruct: {scope: block}` (2 epochs, one Adam step per 8-window shard).
# - MODE=dense (default): each half is one task on the dense activations, all independent;
#   the cost is the job's wall time with `reconstruct: block` minus that with
#   `reconstruct: layer` (its start), on the same worker count.
# - MODE=sequential: each block's re-fit runs between its prune tasks and the next block's
#   calibration, its steps' gradients split over slice tasks; the cost is the wall time
#   from the block's first refit task's start to its last one's end, summed over blocks
#   (from the ledger).
# Prints seconds per block per epoch for each worker count, the speedup, and the out/
# digest (the same for every worker count).
#   ops/bench/block_refit.sh [WORKDIR]     WORKERS="1 2" MODE=dense BLOCKS=10
set -euo pipefail
dir="$(realpath -m "${1:-/tmp/prune-block-refit-bench}")"
cd "$(dirname "$0")/../.."
. ops/bench/smollm2-setup.sh
smollm2_work "$dir"
mode=${MODE:-dense}
blocks=${BLOCKS:-10}
epochs=2
# Blocks 0 … BLOCKS−1 as one regex alternative.
pattern="re:model\\\\.layers\\\\.($(seq -s '|' 0 $((blocks - 1))))\\\\..*"

run() { # name reconstruct workers → seconds on stdout
  local name=$1 reconstruct=$2 w=$3
  rm -rf "${work:?}/$name"
  cat > "$work/$name.yaml" <<EOF
model: $work/model
output: $work/$name
method: wanda
sparsity: 0.7
targets: ["$pattern"]
reconstruct: $reconstruct
calibration: {data: $work/calib.txt, samples: 64, tokens: 256, seed: 0, mode: $mode}
EOF
  local start=$EPOCHREALTIME
  "$prune" run -q --workers "$w" "$work/$name.yaml" > "$work/$name.log"
  python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$start" "$EPOCHREALTIME"
}

printf "%-8s %-10s %12s %12s %24s %s\n" workers mode "layer job s" "block job s" "s per block per epoch" "out/ digest"
first="" base=""
for w in ${WORKERS:-1 2}; do
  block_s=$(run "refit-$mode-block-w$w" "{scope: block}" "$w")
  if [ "$mode" = dense ]; then
    layer_s=$(printf '%.1f' "$(run "refit-$mode-layer-w$w" layer "$w")")
    per=$(python3 -c "import sys; b, l, n, e = map(float, sys.argv[1:]); print((b - l) / n / e)" "$block_s" "$layer_s" "$blocks" "$epochs")
  else
    layer_s="–"
    per=$(python3 - "$work/refit-$mode-block-w$w" "$blocks" "$epochs" <<'PY'
import collections, sqlite3, sys
job, blocks, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
spans = collections.defaultdict(lambda: [float("inf"), 0.0])
for task, seconds, finished in sqlite3.connect(f"{job}/ledger.sqlite").execute(
        "select id, seconds, finished_at from tasks where phase = 'refit' and state = 'done'"):
    b = int(task.split(":")[1])
    spans[b][0] = min(spans[b][0], finished - seconds)
    spans[b][1] = max(spans[b][1], finished)
print(sum(end - start for start, end in spans.values()) / blocks / epochs)
PY
)
  fi
  d=$(out_digest "$work/refit-$mode-block-w$w")
  printf "%-8s %-10s %12s %12.1f %24.2f %s\n" "$w" "$mode" "$layer_s" "$block_s" "$per" "$d"
  [ -n "$base" ] || base=$per
  same_bytes "$d"
done
[ "$base" = "$per" ] || python3 -c "import sys; print(f'speedup {float(sys.argv[1]) / float(sys.argv[2]):.2f}x')" "$base" "$per"
