#!/usr/bin/env bash
# Structured pruning at full scale (benchmarks/results/structured_full/; about 80 minutes on 2 CPU
# cores): a dense MiniLM-L6 fine-tuned on all of SST-2 (1 epoch), then half the heads and three
# quarters of the FFN neurons pruned from it while distilling from it (all of SST-2 x 2 epochs),
# with L0 gates and with magnitude; then latency/accuracy of each compacted model against the
# dense one. Finished runs in RUNS_DIR are reused.
#   bash benchmarks/structured_full.sh [RUNS_DIR]
set -euo pipefail
runs=${1:-runs/structured-full}
mkdir -p "$runs"
step() { local out=$1; shift; [ -f "$out/metrics.json" ] || [ -f "$out/pruning_report.json" ] || "$@"; }
step "$runs/ft-bert" bermo-prune finetune --model minilm-l6 --arch bert --epochs 1 --seed 0 --out "$runs/ft-bert"
for pruner in l0 magnitude; do
  step "$runs/s$pruner-kd-bert" bermo-prune prune "$runs/ft-bert" --arch bert \
      --recipe "recipes/sst2-structured-$pruner-distilled.yaml" --teacher "$runs/ft-bert" --seed 0 \
      --out "$runs/s$pruner-kd-bert"
done
python benchmarks/structured_latency.py --pruned "$runs/sl0-kd-bert" "$runs/smagnitude-kd-bert" \
    --dense "$runs/ft-bert" --threads 2 --out benchmarks/results/structured_full
