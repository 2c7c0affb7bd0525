"""Where do the weights that movement pruning removes first sit, and are they what kills MiniLM-L6?

On four epochs of the full SST-2 set, hard movement's first increment (0.3% of each weight
matrix) sent the model from a task loss of 0.25 to chance (benchmarks/results/movement_budget).
Hypothesis: the lowest movement scores S = -sum_t dL/dW * W sit on the model's outlier features
(hidden dimensions whose activations run far above the median), because |dL/dW * W| grows with
the activation a weight reads (its input column) or the residual dimension it writes to (its
output row); removing those few weights is known to break BERT-family models.

Fine-tunes the pretrained MiniLM-L6 (BERT) as diagnose_movement.py does for STEPS steps while
accumulating S, then for each small sparsity:
- dev accuracy after pruning the lowest S per matrix once (no retraining), against random masks;
- how concentrated those weights are: the share of them in the 1% of input columns, and of
  output rows, that lose most, and the mean activation scale (|x| over a few training batches,
  relative to the matrix's median column) of the columns they read;
- dev accuracy when the same top-k of S leaves alone every weight that reads or writes an
  outlier dimension (activation scale above OUTLIER x the median): if that is healthy, the
  outliers are what kills movement, and protecting them is a fix within the method;
- dev accuracy with the movement masks applied to one kind of matrix, or one layer, at a time.
Prints one JSON line per sparsity.

    OMP_NUM_THREADS=2 python benchmarks/diagnose_movement_outliers.py --steps 500 --sparsities 0.003,0.01,0.03
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import DataCollatorWithPadding

sys.path.insert(0, str(Path(__file__).resolve().parent))  # diagnose_movement beside it
from diagnose_movement import accuracy, batches, masked_accuracy, study_optimizer, train_step  # noqa: E402

from bermo_prune.data import load_split, subsample, tokenize_dataset  # noqa: E402
from bermo_prune.models import load_classifier  # noqa: E402
from bermo_prune.pruning.masks import select_modules, topk_masks  # noqa: E402
from bermo_prune.recipes import DEFAULT_INCLUDE  # noqa: E402

OUTLIER = 6.0  # an input dimension is an outlier when its mean |x| is this many times the median
MATRIX_KINDS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                "intermediate.dense", "output.dense")


@torch.no_grad()
def input_scales(model, modules, loader_batches) -> dict[str, torch.Tensor]:
    """Mean |x| of each input column of each module over the given batches, over its median."""
    sums = {name: torch.zeros(m.in_features) for name, m in modules.items()}

    def record(name):
        def hook(module, args, output):  # returns None: the module's output stays as it is
            sums[name].add_(args[0].detach().abs().reshape(-1, args[0].shape[-1]).mean(0))
        return hook

    hooks = [m.register_forward_hook(record(name)) for name, m in modules.items()]
    model.eval()
    for batch in loader_batches:
        batch.pop("labels", None)
        model(**batch)
    model.train()
    for hook in hooks:
        hook.remove()
    return {name: s / s.median() for name, s in sums.items()}


def concentration(mask: torch.Tensor, dim: int) -> float:
    """Share of the pruned weights in the 1% of rows (dim 1) or columns (dim 0) losing most."""
    per_line = (mask == 0).float().sum(dim)
    top = per_line.topk(max(1, per_line.numel() // 100)).values.sum()
    return float(top / per_line.sum()) if per_line.sum() > 0 else 0.0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--sparsities", default="0.003,0.01,0.03")
    parser.add_argument("--train-samples", type=int, default=8000, help="0: the whole train split")
    parser.add_argument("--out", help="also write the rows to this JSON file")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load_classifier("minilm-l6", "bert", num_labels=2)
    train = tokenize_dataset(subsample(load_split("sst2", "train"), args.train_samples or None, 0), tokenizer, "sst2", 64)
    dev = tokenize_dataset(load_split("sst2", "dev"), tokenizer, "sst2", 64)
    collate = DataCollatorWithPadding(tokenizer)
    modules = select_modules(model, [DEFAULT_INCLUDE])
    scores = {n: torch.zeros_like(m.weight) for n, m in modules.items()}
    optimizer, schedule, _ = study_optimizer(model, args.steps)
    generator = torch.Generator().manual_seed(0)

    def accumulate():
        for n, m in modules.items():
            scores[n].sub_(m.weight.grad * m.weight)

    step = 0
    model.train()
    while step < args.steps:
        for batch in batches(train, collate, 32, generator):
            train_step(model, batch, optimizer, schedule, accumulate)
            step += 1
            if step >= args.steps:
                break
    dense = accuracy(model, dev, collate)
    probe = batches(train, collate, 32, torch.Generator().manual_seed(1))
    scale = input_scales(model, modules, [next(probe) for _ in range(8)])
    outlier_columns = {n: s > OUTLIER for n, s in scale.items()}
    # A hidden dimension that is an outlier wherever the residual stream is read (Q/K/V and the FFN
    # input read it) is also protected where it is written (the attention and FFN output rows).
    residual = torch.stack([c for n, c in outlier_columns.items() if c.numel() == model.config.hidden_size]).any(0)
    protected = {}
    for n, m in modules.items():
        keep = outlier_columns[n].unsqueeze(0).expand_as(m.weight).clone()
        if m.out_features == model.config.hidden_size:
            keep |= residual.unsqueeze(1).expand_as(m.weight)
        protected[n] = keep
    shielded = {n: s.masked_fill(protected[n], float("inf")) for n, s in scores.items()}
    random_scores = {n: torch.rand(s.shape, generator=torch.Generator().manual_seed(7)) for n, s in scores.items()}
    # names are bert.encoder.layer.N.<kind>
    groups = {kind: [n for n in modules if n.split(".", 4)[-1] == kind] for kind in MATRIX_KINDS}
    groups.update({f"layer.{i}": [n for n in modules if f"layer.{i}." in n] for i in range(model.config.num_hidden_layers)})
    rows = []
    for sparsity in [float(s) for s in args.sparsities.split(",")]:
        masks = topk_masks(scores, sparsity, "per_layer")
        pruned_scale = torch.cat([scale[n].unsqueeze(0).expand_as(m)[m == 0] for n, m in masks.items()])
        row = {
            "steps": args.steps, "sparsity": sparsity, "dense": dense,
            "outlier_dimensions": int(residual.sum()), "protected_share": float(
                sum(int(p.sum()) for p in protected.values()) / sum(p.numel() for p in protected.values())),
            "movement": masked_accuracy(model, modules, masks, dev, collate),
            "random": masked_accuracy(model, modules, topk_masks(random_scores, sparsity, "per_layer"), dev, collate),
            "movement_outliers_protected": masked_accuracy(model, modules, topk_masks(shielded, sparsity, "per_layer"),
                                                           dev, collate),
            "column_share_top1pct": float(torch.tensor([concentration(m, 0) for m in masks.values()]).median()),
            "row_share_top1pct": float(torch.tensor([concentration(m, 1) for m in masks.values()]).median()),
            "pruned_input_scale_mean": float(pruned_scale.mean()),
            "pruned_on_outlier_columns": float((pruned_scale > OUTLIER).float().mean()),
        }
        # Which matrices carry the damage: the same masks applied to one kind of matrix (or one
        # layer) at a time, every other matrix left dense.
        for group, names in groups.items():
            only = {n: masks[n] if n in names else torch.ones_like(masks[n]) for n in masks}
            row[f"movement_only_{group}"] = masked_accuracy(model, modules, only, dev, collate)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
