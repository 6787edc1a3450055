#!/usr/bin/env bash
# Generation speed, dense against pruned, ours and transformers' side by side: one
# `prune bench DENSE PRUNED...` (prefill and decode tokens/s and memory of our LlamaDecoder,
# each model in its own process, one BLAS thread; every ratio against the dense figure of
# the same run), then stock
# transformers on CPU torch with one thread on DENSE and every PRUNED (ops/bench/hf_generate.py,
# the same prompt ids). Run it alone on the machine.
#   ops/bench/generation.sh DENSE PRUNED [PRUNED ...]
#   PROMPT=128 DECODE=64 REPEATS=3 ROUNDS=1 (defaults; ROUNDS=3: our models measured in
#   three interleaved rounds, each model's process once a round, the best of all kept)
# e.g. after ops/bench/structured.sh /tmp/alloc:
#   ops/bench/generation.sh /tmp/alloc/model /tmp/alloc/structured-wanda-channels-0.4-w1/out/dense
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 DENSE PRUNED [PRUNED ...]" >&2; exit 2; }
dense=$1; shift
cd "$(dirname "$0")/../.."
. ops/bench/smollm2-setup.sh
args=(--prompt "${PROMPT:-128}" --decode "${DECODE:-64}" --repeats "${REPEATS:-3}")
"$prune" bench "$dense" "$@" "${args[@]}" --rounds "${ROUNDS:-1}"
echo
python3 ops/bench/hf_generate.py "$dense" "$@" "${args[@]}"
