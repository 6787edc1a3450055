#!/usr/bin/env bash
# The evolutionary search's own costs on a real model: SmolLM2-135M-Instruct, Wanda at
# 70%, calibration 64 × 256 KJV tokens (dense mode, so the search starts right after one
# calibration pass), GENERATIONS generations (default 3) of the default budget (offspring
# 8, survivors [2, 1], tokens [512, 2048]) on WORKERS (default "1 2") local workers. Prints
# per worker count: candidate evaluations per second over the search (first fitness task
# started to last finished, from the ledger), the search's wall time, the job's wall
# time, the output digest (the same for every worker count), and the level database's
# size on disk against EvoPress's database of every level's weights (F16).
#   ops/bench/evolution.sh [WORKDIR]
set -euo pipefail
dir="$(realpath -m "${1:-/tmp/prune-evolution-bench}")"
cd "$(dirname "$0")/../.."
. ops/bench/smollm2-setup.sh
smollm2_work "$dir"

first=""
printf "%-8s %12s %10s %10s %s\n" workers "evals/s" "search s" "job s" "out/ digest"
for w in ${WORKERS:-1 2}; do
  name="evolution-w$w"
  rm -rf "${work:?}/$name"
  cat > "$work/$name.yaml" <<EOF
model: $work/model
output: $work/$name
method: wanda
sparsity: 0.7
allocation: {method: evolutionary, generations: ${GENERATIONS:-3}}
calibration: {data: $work/calib.txt, samples: 64, tokens: 256, seed: 0, mode: dense}
EOF
  start=$EPOCHREALTIME
  "$prune" run -q --workers "$w" "$work/$name.yaml" > "$work/$name.log"
  end=$EPOCHREALTIME
  digest=$(out_digest "$work/$name")
  python3 - "$work/$name" "$w" "$start" "$end" "$digest" <<'PY'
import sqlite3, sys
job, w, start, end, digest = sys.argv[1:]
rows = sqlite3.connect(f"{job}/ledger.sqlite").execute(
    "select id, seconds, finished_at from tasks where phase = 'evolve' and state = 'done'").fetchall()
fitness = [r for r in rows if not r[0].endswith(("offspring", "survivors"))]
begin = min(f - s for _, s, f in fitness)
finish = max(f for _, _, f in rows)
print(f"{w:<8} {len(fitness) / (finish - begin):12.3f} {finish - begin:10.1f} {float(end) - float(start):10.1f} {digest}"
      f"  ({len(fitness)} evaluations)")
PY
  same_bytes "$digest"
done

# The level database: one byte per weight of every pruned layer (artifacts of leveldb:
# tasks), against EvoPress's prune.py, which saves every level's weights of every layer.
python3 - "$work/evolution-w${WORKERS##* }" <<'PY'
import json, os, sqlite3, sys
job = sys.argv[1]
db = sqlite3.connect(f"{job}/ledger.sqlite")
ours = 0
for (result,) in db.execute("select result_sha256 from tasks where phase = 'leveldb'"):
    digest = result.split("=", 1)[1]
    ours += os.path.getsize(f"{job}/artifacts/{digest[:2]}/{digest}")
manifest = json.load(open(f"{job}/out/manifest.json"))
search = manifest["search"]
step, levels = search["step_weights"], search["levels"]
theirs = 0
for t in manifest["tensors"].values():
    if not t["pruned"]:
        continue
    n, s = t["elements"], manifest["sparsity"]
    down = min(levels, int(s / (step / n))); up = min(levels, int((1 - s) / (step / n)))
    theirs += (down + up + 1) * n * 2
print(f"level database: {ours} bytes on disk ({ours / 2**20:.1f} MiB); EvoPress's every-level F16 weights: "
      f"{theirs} bytes ({theirs / 2**30:.2f} GiB), {theirs / ours:.1f}x")
PY
