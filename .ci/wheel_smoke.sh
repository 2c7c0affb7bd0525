#!/usr/bin/env bash
# What a user of `pip install .` gets: build the wheel, install it (not editable) into a fresh
# virtual environment, and run every CLI command from there, outside the source tree, on a tiny
# randomly initialised BERT (seconds per command).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
. "$work/venv/bin/activate"
pip install -q "torch==2.13.0" "$root"            # pip builds the wheel from the source tree
cd "$work"                                         # nothing of the source tree on the path
bermo-prune --version
for command in bench compact demo evaluate export finetune inspect predict prune pruners report; do
    bermo-prune "$command" --help > /dev/null
done
bermo-prune recipe check sst2-movement > /dev/null
bermo-prune pruners > /dev/null
python - <<'PY'
from transformers import BertConfig, BertModel
from bermo_prune.models import load_classifier
_, tokenizer = load_classifier("minilm-l6", "bert")          # the default checkpoint is installed
config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=64, max_position_embeddings=64)
BertModel(config).save_pretrained("tiny")
tokenizer.save_pretrained("tiny")
PY
fast=(--epochs 1 --max-train-samples 32)
bermo-prune prune tiny --arch bermo --recipe sst2-magnitude --task sst2 "${fast[@]}" --out pruned > /dev/null
bermo-prune evaluate pruned --task sst2 > /dev/null
bermo-prune inspect pruned > /dev/null
bermo-prune export pruned --format sparse --out sparse > /dev/null
bermo-prune finetune --model tiny --task sst2 "${fast[@]}" --out dense > /dev/null
bermo-prune prune tiny --recipe sst2-structured-magnitude --task sst2 "${fast[@]}" --out structured > /dev/null
bermo-prune compact structured --out compacted > /dev/null
cat > spec.yaml <<YAML
name: smoke
checkpoint: tiny
recipes: [dense, sst2-magnitude]
sparsities: [0.5]
training: {max_train_samples: 32, epochs: 1}
YAML
bermo-prune bench spec.yaml --out sweep > /dev/null
bermo-prune report sweep -o sweep/report > /dev/null
test -s sweep/report/summary.json
# ONNX needs the onnx extra: without it, a one-line error; with it, export, predict and evaluate
if bermo-prune export pruned --format onnx --out onnx 2> err.txt; then echo "ONNX export ran without the extra"; exit 1; fi
grep -q 'pip install "bermo-prune\[onnx\]"' err.txt
pip install -q "$root[onnx]"
bermo-prune export compacted --format onnx --quantize int8 --out onnx-int8 > /dev/null
bermo-prune predict onnx-int8 "a fine film" > /dev/null
bermo-prune evaluate onnx-int8 --task sst2 > /dev/null
echo "wheel smoke test: ok"
