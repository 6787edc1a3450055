#!/usr/bin/env bash
# Training and pruning an MLP classifier on Fashion-MNIST with the tool alone (`train:`,
# `schedule:`): a fresh 784-256-128-10 ReLU MLP (`prune init-mlp`, seed 0) trained dense,
# then pruned to SPARSITY (default 0.9) one-shot by magnitude (no fine-tuning), one-shot +
# fine-tuning, gradual (Zhu & Gupta cubic, 8 rounds of 1 epoch + fine-tuning), and penalty
# (L1 then prune then fine-tune), and adaptive (levels raised from 0.5 by 0.1 while the accuracy
# on VALIDATION held-out training examples stays within 1 point of the dense model's, up to
# ADAPTIVE_MAX; its dense model is trained without those examples); every training with a
# cosine learning rate (LR_SCHEDULE).
# Test accuracy on the 10k test split for each, wall time on
# WORKERS (default 0: in process) and, with more than one value, the bytes compared.
#   ops/bench/train_fmnist.sh [WORKDIR]
#   WORKERS="1 2" EPOCHS=10 FT_EPOCHS=4 SPARSITY=0.9 VARIANTS="oneshot finetune gradual penalty adaptive"
set -euo pipefail
dir="$(realpath -m "${1:-/tmp/prune-train-bench}")"
cd "$(dirname "$0")/../.."
# The release build, $prune and one BLAS thread (no SmolLM2 here).
. ops/bench/smollm2-setup.sh
data=/usr/share/datasets/fashion-mnist
mkdir -p "$dir"
[ -f "$dir/init/mlp.json" ] || "$prune" init-mlp "$dir/init" --seed 0 --labels "T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot"
lr=${LR:-0.05}
s=${SPARSITY:-0.9}
ft=${FT_EPOCHS:-4}

# run NAME MODEL SPARSITY TRAIN [SCHEDULE]: each worker count; prints accuracy and seconds.
run() {
  local name=$1 model=$2 sparsity=$3 train=$4 schedule=${5:-} first=""
  for w in ${WORKERS:-0}; do
    local job="$dir/$name-w$w"
    rm -rf "$job"
    {
      echo "model: $model"
      echo "output: $job"
      echo "method: magnitude"
      echo "sparsity: $sparsity"
      [ -z "$train" ] || echo "train: {data: $data, $train}"
      [ -z "$schedule" ] || echo "schedule: $schedule"
      echo "evaluation: {data: $data}"
    } > "$job.yaml"
    start=$EPOCHREALTIME
    "$prune" run -q --workers "$w" "$job.yaml" > "$job.log"
    end=$EPOCHREALTIME
    python3 - "$job" "$name" "$w" "$start" "$end" <<'PY'
import json, sys
job, name, w, start, end = sys.argv[1:]
r = json.load(open(f"{job}/report.json"))
e = r["evaluation"]
t = r.get("training")
steps = sum(1 for _ in t["epochs"]) * t["steps_per_epoch"] if t else 0
print(f"{name:<10} workers {w}  accuracy {e['dense']:.4f} -> {e['pruned']:.4f}  zeros {100 * r['sizes']['zeros'] / max(r['sizes']['pruned_parameters'], 1):.1f}%  {float(end) - float(start):7.1f} s  ({steps} steps)")
a = t.get("adaptive") if t else None
if a:
    print(f"  adaptive: validation reference {a['reference_accuracy']:.4f}, budget {a['budget']}, chosen sparsity {a['sparsity']:.3f} (round {a.get('chosen_round')})")
    for x in a["rounds"]:
        print(f"    round {x['round']}: sparsity {x['sparsity']:.3f} from {'start' if x['base_round'] < 0 else 'round %d' % x['base_round']}: validation {x.get('validation_accuracy', float('nan')):.4f} {'met' if x.get('met') else 'missed'}")
PY
    digest=$(out_digest "$job")
    echo "  out/ $digest"
    same_bytes "$digest"
  done
}

trainkeys="batch: 128, learning_rate: $lr, momentum: 0.9, lr_schedule: ${LR_SCHEDULE:-cosine}"
[ -f "$dir/dense-w${WORKERS%% *}/out/dense/mlp.json" ] && [ -z "${RETRAIN:-}" ] || run dense "$dir/init" 0 "epochs: ${EPOCHS:-10}, $trainkeys"
dense="$dir/dense-w${WORKERS%% *}/out/dense"
for v in ${VARIANTS:-oneshot finetune gradual penalty}; do
  case $v in
    oneshot) run oneshot "$dense" "$s" "" ;;
    finetune) run finetune "$dense" "$s" "epochs: $ft, $trainkeys" ;;
    gradual) run gradual "$dense" "$s" "epochs: $ft, $trainkeys" "{method: gradual, initial: 0, rounds: ${ROUNDS:-8}, epochs_per_round: 1}" ;;
    penalty) run penalty "$dense" "$s" "epochs: $ft, $trainkeys" "{method: penalty, l1: ${L1:-1e-4}, epochs: ${PENALTY_EPOCHS:-4}}" ;;
    adaptive)
      # The validation examples are the training split's last VALIDATION: a dense model
      # trained without them, so neither side of the comparison has seen them.
      held=${VALIDATION:-6000}
      [ -f "$dir/dense-heldout-w${WORKERS%% *}/out/dense/mlp.json" ] || run dense-heldout "$dir/init" 0 "examples: $((60000 - held)), epochs: ${EPOCHS:-10}, $trainkeys"
      # A cosine per round (an adaptive schedule restarts it in each): every round's
      # accuracy is measured annealed, as the dense model's was.
      run adaptive "$dir/dense-heldout-w${WORKERS%% *}/out/dense" "${ADAPTIVE_MAX:-0.98}" \
        "epochs: $ft, batch: 128, learning_rate: $lr, momentum: 0.9, lr_schedule: ${ADAPTIVE_LR_SCHEDULE:-cosine}" \
        "{method: adaptive, initial: 0.5, step: 0.1, rounds: ${ROUNDS:-8}, epochs_per_round: 1, budget: 0.01, validation: $held}" ;;
  esac
done
