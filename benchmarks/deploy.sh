#!/usr/bin/env bash
# Deployment benchmark (benchmarks/results/deploy/): PyTorch fp32 vs ONNX Runtime fp32 / INT8 of the
# structured full-scale models (dense control, 67%, 83%: benchmarks/structured_full.sh makes them)
# and of one unstructured 90% model pruned on the same budget (L0, all of SST-2 x 2 epochs,
# distilled from the dense start: ~25 minutes on 2 CPU cores). Finished runs in RUNS_DIR are reused.
#   bash benchmarks/deploy.sh [RUNS_DIR]
set -euo pipefail
runs=${1:-runs/structured-full}
bash benchmarks/structured_full.sh "$runs"
step() { local out=$1; shift; [ -f "$out/config.json" ] || "$@"; }
step "$runs/l0-kd90-bert" bermo-prune prune "$runs/ft-bert" --arch bert --recipe recipes/sst2-l0-distilled-full.yaml \
    --teacher "$runs/ft-bert" --seed 0 --out "$runs/l0-kd90-bert"
for run in sl0-kd-bert sl0-kd83-bert; do
  step "$runs/$run-compact" bermo-prune compact "$runs/$run" --out "$runs/$run-compact"
done
python benchmarks/deploy_latency.py --dense "$runs/ft-bert-3ep" \
    --model compact67="$runs/sl0-kd-bert-compact" --model compact83="$runs/sl0-kd83-bert-compact" \
    --model unstructured90="$runs/l0-kd90-bert" --threads 2 --out benchmarks/results/deploy
