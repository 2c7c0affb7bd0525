#!/usr/bin/env bash
# Deployment benchmark (benchmarks/results/deploy/): PyTorch fp32 vs ONNX Runtime fp32 / INT8 of the
# full-scale structured models of benchmarks/structured_full.sh (dense control, 67%, 83%, logit
# distillation) and of one unstructured 90% model pruned on the same budget (L0, all of SST-2 x 2
# epochs, distilled from the same dense start). About 100 minutes of training on 2 CPU cores for
# what structured_full.sh has not made yet; finished runs in RUNS_DIR (shared with it) are reused.
#   bash benchmarks/deploy.sh [RUNS_DIR]
set -euo pipefail
runs=${1:-runs/structured-full}
mkdir -p "$runs"
step() { local out=$1; shift; [ -f "$out/config.json" ] || "$@"; }
step "$runs/ft-bert" bermo-prune finetune --model minilm-l6 --arch bert --epochs 1 --seed 0 --out "$runs/ft-bert"
step "$runs/ft-bert-3ep" bermo-prune finetune --model "$runs/ft-bert" --arch bert --epochs 2 --seed 0 \
    --out "$runs/ft-bert-3ep"
for job in sl0-kd-bert:sst2-structured-l0-distilled sl0-kd83-bert:sst2-structured-l0-distilled-83 \
           l0-kd90-bert:sst2-l0-distilled-full; do
  step "$runs/${job%%:*}" bermo-prune prune "$runs/ft-bert" --arch bert --recipe "recipes/${job#*:}.yaml" \
      --teacher "$runs/ft-bert" --seed 0 --out "$runs/${job%%:*}"
done
for run in sl0-kd-bert sl0-kd83-bert; do
  step "$runs/$run-compact" bermo-prune compact "$runs/$run" --out "$runs/$run-compact"
done
python benchmarks/deploy_latency.py --dense "$runs/ft-bert-3ep" \
    --model compact67="$runs/sl0-kd-bert-compact" --model compact83="$runs/sl0-kd83-bert-compact" \
    --model unstructured90="$runs/l0-kd90-bert" --threads 2 --out benchmarks/results/deploy
