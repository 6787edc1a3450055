#!/usr/bin/env bash
# Cluster benchmarks (issue: cluster runtime), release build, same machine, same run:
#   1. coordinator overhead: empty tasks per second through the full loop (2 workers)
#   2. bytes on the wire per pruned weight (a real job, workers reading the checkpoint locally)
#   3. 1 versus 2 workers on a >= 1 GB checkpoint, one BLAS thread per worker
#   4. coordinator peak RSS on a >= 4 GB checkpoint
# Usage: ops/bench/cluster.sh [WORKDIR]   (needs ~15 GB free disk in WORKDIR)
#   PRUNE_BENCH_SCRATCH=DIR  build with --scratch-path DIR (default .build)
#   PRUNE_DIGEST_CACHE=off   hash the checkpoint in every process, as before the digest cache
#                            (otherwise each job of 2/3 gets a fresh, empty cache of its own)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
work="${1:-/tmp/prune-cluster-bench}"
scratch="${PRUNE_BENCH_SCRATCH:-.build}"
mkdir -p "$work"
cd "$root"
swift build -c release --product prune --scratch-path "$scratch" 2>&1 | tail -1
prune="$(cd "$scratch/release" && pwd)/prune"
export OPENBLAS_NUM_THREADS=1

echo "== 1. coordinator overhead (empty tasks, 2 workers)"
"$prune" bench-coordinator --tasks 5000 --workers 2

[ -f "$work/model-1gb/config.json" ] || python3 ops/make_big_model.py "$work/model-1gb" --gb 1.05
[ -f "$work/model-4gb/config.json" ] || python3 ops/make_big_model.py "$work/model-4gb" --gb 4.1
du -sh "$work/model-1gb" "$work/model-4gb"

job() { # name model workers
  rm -rf "$work/$1"
  sync  # the deletion of the last run's 2 GB of outputs must not overlap this job's writes
  printf 'model: %s\noutput: %s\nmethod: magnitude\nsparsity: 0.5\npattern: unstructured\n' "$2" "$work/$1" > "$work/$1.yaml"
  # Each job starts with an empty digest cache of its own, so every job hashes the
  # checkpoint once (a first run on this host), and no job profits from the one before.
  local cache="$work/$1.digests"
  rm -f "$cache" "$cache.lock"
  [ "${PRUNE_DIGEST_CACHE:-}" = off ] && cache=off
  date +%s.%N > "$work/$1.start"
  PRUNE_DIGEST_CACHE="$cache" /usr/bin/time -f "%e s wall, coordinator peak RSS %M KB" "$prune" run -q --workers "$3" "$work/$1.yaml"
  date +%s.%N > "$work/$1.end"
}

phases() { # name: where the wall time of a job went (ledger events, report.json, start/end stamps)
  python3 - "$work/$1" <<'PY'
import json, sqlite3, sys
job = sys.argv[1]
start, end = float(open(job + ".start").read()), float(open(job + ".end").read())
first, last = sqlite3.connect(job + "/ledger.sqlite").execute(
    "SELECT min(time), max(time) FROM events WHERE kind IN ('assign','done')").fetchone()
assemble = {p["name"]: p["seconds"] for p in json.load(open(job + "/report.json"))["phases"]}["assemble"]
print(f"phases: start to first task {first - start:.2f} s (checkpoint digests, NaN scan, plan, ledger, workers starting); "
      f"mask {last - first:.2f} s; assemble {assemble:.2f} s; rest {end - last - assemble:.2f} s (report, shutdown); "
      f"total {end - start:.2f} s")
PY
}

echo "== 2/3. 1 versus 2 workers on the 1 GB checkpoint"
for w in 1 2; do
  echo "-- $w worker(s)"
  job "w$w" "$work/model-1gb" "$w"
  sqlite3 "$work/w$w/ledger.sqlite" "SELECT printf('mask phase: %.2f s (first assign to last result)', max(time) - min(time)) FROM events WHERE kind IN ('assign','done');"
  phases "w$w"
done
cmp "$work/w1/out/dense/model-00001-of-00002.safetensors" "$work/w2/out/dense/model-00001-of-00002.safetensors" && echo "outputs identical"
python3 - "$work/w2" <<'PY'
import json, sqlite3, sys
job = sys.argv[1]
db = sqlite3.connect(job + "/ledger.sqlite")
vals = dict(db.execute("select key, value from job"))
m = json.load(open(job + "/out/manifest.json"))
pruned = sum(t["masked"] for t in m["tensors"].values() if t["pruned"])
weights = m["totals"]["pruned_parameters"]
wire = int(vals["wire_bytes_in"]) + int(vals["wire_bytes_out"])
print(f"wire bytes: {wire}; per pruned weight: {8 * wire / pruned:.3f} bits; per weight of pruned tensors: {8 * wire / weights:.3f} bits")
PY

echo "== 4. coordinator peak RSS on the 4 GB checkpoint"
# The coordinator alone under /usr/bin/time (prune run would count its workers too):
# prune coordinator on loopback, two workers started beside it.
rm -rf "$work/big"
printf 'model: %s\noutput: %s\nmethod: magnitude\nsparsity: 0.5\npattern: unstructured\n' "$work/model-4gb" "$work/big" > "$work/big.yaml"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
/usr/bin/time -f "coordinator: %e s wall, peak RSS %M KB" "$prune" coordinator -q --job "$work/big.yaml" --bind "tcp://127.0.0.1:$port" --insecure &
coord=$!
sleep 2
"$prune" worker --connect "tcp://127.0.0.1:$port" --insecure --name bw1 2>/dev/null &
"$prune" worker --connect "tcp://127.0.0.1:$port" --insecure --name bw2 2>/dev/null &
wait "$coord"
wait
du -sh "$work/big/out/dense" "$work/big/out/sparse"
