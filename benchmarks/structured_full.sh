#!/usr/bin/env bash
# Structured pruning at full scale (benchmarks/results/structured_full/; about 110 minutes on 2 CPU
# cores): a dense MiniLM-L6 fine-tuned on all of SST-2 (1 epoch) is the start and the teacher;
# head_neuron_l0 prunes it while distilling from it (all of SST-2 x 2 epochs) to two sizes:
#   half the heads and 3/4 of the FFN neurons (67% of the encoder Linear weights), logit distillation;
#   3/4 of the heads and 7/8 of the neurons (83%), logit distillation, and logit + layer-wise;
# the dense control trains the start for as long, unpruned; then latency/accuracy of each compacted
# model against its uncompacted self and the dense model.
# Finished runs in RUNS_DIR are reused.
#   bash benchmarks/structured_full.sh [RUNS_DIR]
set -euo pipefail
runs=${1:-runs/structured-full}
mkdir -p "$runs"
step() { local out=$1; shift; [ -f "$out/metrics.json" ] || [ -f "$out/pruning_report.json" ] || "$@"; }
step "$runs/ft-bert" bermo-prune finetune --model minilm-l6 --arch bert --epochs 1 --seed 0 --out "$runs/ft-bert"
prune() {  # prune NAME RECIPE: from the fine-tuned start, distilling from it
  step "$runs/$1" bermo-prune prune "$runs/ft-bert" --arch bert --recipe "recipes/$2.yaml" \
      --teacher "$runs/ft-bert" --seed 0 --out "$runs/$1"
}
prune sl0-kd-bert sst2-structured-l0-distilled
prune sl0-kd83-bert sst2-structured-l0-distilled-83
prune sl0-lw83-bert sst2-structured-l0-layerwise-83
# the dense control on the pruned runs' budget: the start fine-tuned for 2 more epochs, unpruned
step "$runs/ft-bert-3ep" bermo-prune finetune --model "$runs/ft-bert" --arch bert --epochs 2 --seed 0 \
    --out "$runs/ft-bert-3ep"
results=benchmarks/results/structured_full
mkdir -p "$results/runs"
for run in ft-bert ft-bert-3ep; do cp "$runs/$run/metrics.json" "$results/runs/$run.json"; done
for run in sl0-kd-bert sl0-kd83-bert sl0-lw83-bert; do cp "$runs/$run/pruning_report.json" "$results/runs/$run.json"; done
python benchmarks/structured_latency.py --pruned "$runs/sl0-kd-bert" "$runs/sl0-kd83-bert" "$runs/sl0-lw83-bert" \
    --dense "$runs/ft-bert" --threads 2 --out "$results"
