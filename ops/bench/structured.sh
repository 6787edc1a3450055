#!/usr/bin/env bash
# Structured pruning on a real model: SmolLM2-135M-Instruct, calibration 64 × 256 KJV
# Genesis–Malachi tokens, perplexity on 32 × 256 held-out KJV Matthew–Revelation tokens.
# For each pruning (method, pattern, sparsity): perplexity, parameters before and after,
# the decoder's share removed, dense/ bytes, wall time (prune + evaluation) on WORKERS
# (default 2) local workers, and the out/ digest, the same for every worker count.
#   ops/bench/structured.sh [WORKDIR]
#   PRUNINGS="magnitude channels 0.267;wanda channels 0.4 layer" WORKERS="1 2"
#   (a fourth word `layer` adds reconstruct: layer, the re-fit of down_proj / o_proj;
#   pattern heads+channels takes a level CHANNELS/HEADS, e.g. 0.317/0.34: sparsity and head_sparsity)
#   ALLOCATION=global: every block's units ranked together (FLAP's adaptive structure, per-layer
#   widths; calibration in dense mode); the level is then the fraction of the units' parameters
#   (q/o/gate/up/down weights) removed: 0.2134 removes 20.0% of the decoder, 0.32 30.0%
#   STANDARDIZE=robust (with ALLOCATION=global): each block's scores standardized by median and
#   interquartile range instead of FLAP's mean and standard deviation
#   UNIT_NORM=l1 (method magnitude): units scored by the L1 norm of their weights instead of L2
#   SPEED=1: the spec also asks `speed: true` (the report measures both models' generation
#   speed, as prune bench); the decode speed-up is printed after the digest
# SmolLM2's decoder is 30 blocks of 3.54 M weights, 2.65 M of them in the MLP: channels at
# 0.267 remove 20.0% of the decoder's weights, at 0.4 30.0%; heads at 0.34 remove 3 of 9
# query heads a block (6.2%); heads+channels at 0.184/0.34 remove 20.0%, at 0.317/0.34 30.0%.
set -euo pipefail
dir="$(realpath -m "${1:-/tmp/prune-structured-bench}")"
cd "$(dirname "$0")/../.."
. ops/bench/smollm2-setup.sh
smollm2_work "$dir"

printf "%-10s %-15s %-6s %-8s %10s %12s %12s %9s %9s %s\n" method pattern level workers perplexity params "decoder −" "dense MB" seconds "out/ digest"
IFS=';' read -ra prunings <<< "${PRUNINGS:-magnitude channels 0.267;wanda channels 0.267;magnitude channels 0.4;wanda channels 0.4;wanda heads 0.34}"
for pruning in "${prunings[@]}"; do
  read -r method pattern level refit <<< "$pruning"
  first=""
  for w in ${WORKERS:-2}; do
    name="structured-$method-$pattern-${level//\//-}${refit:+-$refit}${ALLOCATION:+-$ALLOCATION}${STANDARDIZE:+-$STANDARDIZE}${UNIT_NORM:+-$UNIT_NORM}-w$w"
    rm -rf "${work:?}/$name"
    {
      echo "model: $work/model"
      echo "output: $work/$name"
      echo "method: $method"
      echo "sparsity: ${level%%/*}"
      [ "${level#*/}" = "$level" ] || echo "head_sparsity: ${level#*/}"
      echo "pattern: $pattern"
      [ -z "$refit" ] || echo "reconstruct: $refit"
      [ -z "${UNIT_NORM:-}" ] || echo "unit_norm: $UNIT_NORM"
      [ -z "${ALLOCATION:-}" ] || echo "allocation: {method: $ALLOCATION${STANDARDIZE:+, standardize: $STANDARDIZE}}"
      [ "$method" = magnitude ] && [ -z "$refit" ] || echo "calibration: {data: $work/calib.txt, samples: 64, tokens: 256, seed: 0${ALLOCATION:+, mode: dense}}"
      echo "evaluation: {data: $work/eval.txt, samples: 32, tokens: 256}"
      [ -z "${SPEED:-}" ] || echo "speed: true"
    } > "$work/$name.yaml"
    start=$EPOCHREALTIME
    "$prune" run -q --workers "$w" "$work/$name.yaml" > "$work/$name.log"
    end=$EPOCHREALTIME
    "$prune" check -q "$work/model" "$work/$name" > /dev/null
    digest=$(out_digest "$work/$name")
    python3 - "$work/$name" "$method" "$pattern${refit:++$refit}" "$level" "$w" "$start" "$end" "$digest" <<'PY'
import json, math, os, sys
job, method, pattern, level, w, start, end, digest = sys.argv[1:]
r = json.load(open(os.path.join(job, "report.json")))
m = json.load(open(os.path.join(job, "out", "manifest.json")))
s = m["structure"]
dec_before = sum(math.prod(t.get("source_shape", t["shape"])) for n, t in m["tensors"].items() if n.startswith("model.layers.") and not t.get("added"))
dec_after = sum(t["elements"] for n, t in m["tensors"].items() if n.startswith("model.layers."))
print(f"{method:<10} {pattern:<15} {level:<6} {w:<8} {r['evaluation']['pruned']:10.3f} {s['parameters_after']:12d} "
      f"{100 * (dec_before - dec_after) / dec_before:11.1f}% {m['totals']['dense_bytes'] / 1e6:9.1f} "
      f"{float(end) - float(start):9.1f} {digest}"
      + (f"  decode {r['speed']['dense']['decode_tokens_per_second']:.2f} → {r['speed']['pruned']['decode_tokens_per_second']:.2f} tok/s" if "speed" in r else "")
      + "".join(f"  {p['kind']} {min(p['kept_per_layer'])}–{max(p['kept_per_layer'])} a block" for p in s.get("parts") or [] if p.get("kept_per_layer")))
PY
    same_bytes "$digest"
  done
done
