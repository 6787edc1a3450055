#!/usr/bin/env bash
# What verification costs (docs/protocol.md, "Trust"): the same SmolLM2-135M-Instruct job
# run by `prune coordinator` and two honest local workers over tcp:// loopback with
# verify: 0, the tcp:// default 0.05, and 1 (every task twice), same machine, one after the
# other. Prints wall time, the tasks run twice and the coordinator's own computations
# (ledger events), and checks that all three wrote the same bytes.
#   ops/bench/verify.sh [WORKDIR]
#   METHOD=magnitude|wanda (default wanda; wanda calibrates on 64 × 256 KJV tokens)
#   PATTERN=2:4 (default)   FRACTIONS="0 0.05 1" (default)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
work="${1:-/tmp/prune-verify-bench}"
mkdir -p "$work"
work="$(cd "$work" && pwd)"
cd "$root"
. ops/bench/smollm2-setup.sh
smollm2_model "$work/smollm2"
kjv_text "$work/calib.txt" 'gen1:1-mal4:6'
method="${METHOD:-wanda}" pattern="${PATTERN:-2:4}"

for f in ${FRACTIONS:-0 0.05 1}; do
  name="$method-v$f"
  rm -rf "${work:?}/$name"
  {
    printf "model: %s\noutput: %s\nmethod: %s\npattern: '%s'\nverify: %s\n" "$work/smollm2" "$work/$name" "$method" "$pattern" "$f"
    [ "$method" = magnitude ] || printf "calibration: {data: %s, samples: 64, tokens: 256}\n" "$work/calib.txt"
  } > "$work/$name.yaml"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  start=$(date +%s.%N)
  "$prune" coordinator -q --job "$work/$name.yaml" --bind "tcp://127.0.0.1:$port" --insecure > /dev/null &
  coord=$!
  for w in 1 2; do "$prune" worker --connect "tcp://127.0.0.1:$port" --insecure --name "w$w" 2>/dev/null & done
  wait "$coord"
  wait
  end=$(date +%s.%N)
  python3 - "$work/$name/ledger.sqlite" "$f" "$start" "$end" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
tasks = db.execute("select count(*) from tasks").fetchone()[0]
verified = db.execute("select count(*) from events where kind = 'verify'").fetchone()[0]
recomputed = db.execute("select count(*) from events where kind = 'recompute'").fetchone()[0]
print(f"verify {sys.argv[2]}: {float(sys.argv[4]) - float(sys.argv[3]):.1f} s wall, {tasks} tasks, {verified} verified, "
      f"{recomputed} computed by the coordinator")
PY
done
first=""
for f in ${FRACTIONS:-0 0.05 1}; do
  sum=$(cat "$work/$method-v$f"/out/dense/*.safetensors "$work/$method-v$f"/out/sparse/*.safetensors | sha256sum | cut -c1-16)
  [ -z "$first" ] && first=$sum
  echo "verify $f: out/ sha256 $sum $([ "$sum" = "$first" ] && echo same || echo DIFFERENT)"
done
