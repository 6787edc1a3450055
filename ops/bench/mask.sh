#!/usr/bin/env bash
# Mask throughput: ours (Swift, release, one thread) next to a plain copy of the same bytes
# and numpy's np.partition reference, on the same 4096×11008 F32 matrix size, same run.
#   ops/bench/mask.sh [--rows N --cols N --repeat N]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
swift build -c release --product PruneBench 2>&1 | tail -1
ours=$(OPENBLAS_NUM_THREADS=1 .build/release/PruneBench "$@" 2>/dev/null)
theirs=$(OPENBLAS_NUM_THREADS=1 python3 ops/bench/mask_numpy.py "$@")
python3 - "$ours" "$theirs" <<'PY'
import json, sys
ours, theirs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
copy = ours["copy"]["gbps"]
print(f"{'case':<14}{'prune GB/s':>12}{'vs copy':>10}{'numpy GB/s':>12}{'prune/numpy':>13}")
for case in ["copy", "unstructured", "per_row", "2:4"]:
    o, t = ours[case]["gbps"], theirs[case]["gbps"]
    print(f"{case:<14}{o:>12.3f}{o / copy:>10.2f}{t:>12.3f}{o / t:>13.2f}")
PY
