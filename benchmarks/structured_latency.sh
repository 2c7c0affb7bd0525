#!/usr/bin/env bash
# Reproduces benchmarks/results/structured_latency/ on MiniLM-L6 (about 35 minutes on 2 CPU cores):
# a dense reference and four structured pruning runs (one distilled from the dense model) on the
# same budget (8,000 SST-2 examples x 3 epochs), then latency/accuracy of each compacted model
# against its uncompacted self. Finished runs in RUNS_DIR are reused.
#   bash benchmarks/structured_latency.sh [RUNS_DIR]
set -euo pipefail
runs=${1:-runs/structured}
mkdir -p "$runs"
step() { local out=$1; shift; [ -f "$out/metrics.json" ] || [ -f "$out/pruning_report.json" ] || "$@"; }
step "$runs/ft-bert" bermo-prune finetune --model minilm-l6 --arch bert --epochs 3 \
    --max-train-samples 8000 --seed 0 --out "$runs/ft-bert"
for arch in bert bermo; do
  step "$runs/sm-$arch" bermo-prune prune minilm-l6 --arch "$arch" \
      --recipe recipes/sst2-structured-magnitude.yaml --seed 0 --out "$runs/sm-$arch"
done
step "$runs/sl0-bert" bermo-prune prune minilm-l6 --arch bert \
    --recipe recipes/sst2-structured-l0.yaml --seed 0 --out "$runs/sl0-bert"
# the same structured magnitude pruning, distilled from the dense fine-tuned model
step "$runs/sm-kd-bert" bermo-prune prune minilm-l6 --arch bert --recipe recipes/sst2-structured-magnitude.yaml \
    --teacher "$runs/ft-bert" --seed 0 --out "$runs/sm-kd-bert"
python benchmarks/structured_latency.py --pruned "$runs/sm-bert" "$runs/sm-bermo" "$runs/sl0-bert" "$runs/sm-kd-bert" \
    --dense "$runs/ft-bert" --sizes-from minilm-l6 --threads 2 --out benchmarks/results/structured_latency
