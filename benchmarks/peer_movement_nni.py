"""Peer check: does NNI's own movement pruner also collapse on the study's short budget?

    python -m venv .venv-nni && .venv-nni/bin/pip install "nni==3.0" "torch==2.13.0" -e .
    .venv-nni/bin/python benchmarks/peer_movement_nni.py --sparsities 0,0.5,0.8 --seeds 0 \
        --out benchmarks/results/peer_movement_nni

Runs ``nni.compression.pruning.MovementPruner`` (NNI 3.0) through a ``TorchEvaluator`` on the
budget of the SST-2 study (recipe sst2-movement as run by benchmarks/specs/pruner_health.yaml):
the packaged MiniLM-L6 as BertForSequenceClassification (2 labels), 8,000 SST-2 training
examples subsampled by the run's seed (the same rows as the study), 2 epochs = 500 steps of
batch 32 at max length 64, AdamW lr 5e-5, weight decay 0.0 (the recipe's value), gradient
clipping at 1.0 and a linear schedule with 10% warm-up (the HF Trainer defaults the study runs
with). Every encoder Linear weight (query/key/value/attention output/intermediate/output) gets
its own top-k mask (scope per_layer); NNI's cubic schedule runs from 10% to 70% of the steps.

What NNI does differently from our sst2-movement (kept, since the point is NNI's own method):
scores are learned parameters trained by a separate Adam at lr 1e-2 (the authors' variant, our
``scores: learned``) from the first step, so they warm up through the dense phase; the sparsity
target is updated every step instead of every 10; masks keep being re-chosen every step after
the window too (ours are fixed for the last 30%). NNI lives in its own environment (above):
it is a benchmark dependency only.
One JSON per run in --out; runs whose JSON exists are skipped. ``--sparsities 0`` runs the same
harness with all-ones masks: a dense control for the harness itself (the study's dense BERT
on this budget: 86.2 with seed 0).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import sys
import time
import warnings
from pathlib import Path

import nni
import torch
import transformers
from nni.compression.pruning import MovementPruner
from nni.compression.utils import TorchEvaluator
from transformers import AutoTokenizer, BertForSequenceClassification, DataCollatorWithPadding

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bermo_prune.data import load_split, subsample  # noqa: E402
from bermo_prune.io import write_json_atomic  # noqa: E402
from bermo_prune.models.load import resolve_checkpoint  # noqa: E402
from bermo_prune.recipes import DEFAULT_INCLUDE  # noqa: E402

# NNI patches optimizer.step after the scheduler is built; torch takes that for a wrong call order
warnings.filterwarnings("ignore", message="Seems like `optimizer.step\\(\\)` has been overridden")

WINDOW = (0.1, 0.7)  # pruning window as fractions of the optimizer steps (recipe sst2-movement)
WARMUP_RATIO, MAX_GRAD_NORM = 0.1, 1.0


def tokenized_batches(tokenizer, rows, batch_size: int, max_length: int, generator=None):
    """Batches of dynamically padded tensors; shuffled when a generator is given."""
    collate = DataCollatorWithPadding(tokenizer)
    sentences, labels = list(rows["sentence"]), list(rows["label"])  # datasets 5 gives Column objects
    encoded = tokenizer(sentences, truncation=True, max_length=max_length)
    features = [{"input_ids": ids, "attention_mask": am, "token_type_ids": tt, "labels": label}
                for ids, am, tt, label in zip(encoded["input_ids"], encoded["attention_mask"],
                                              encoded["token_type_ids"], labels)]
    return torch.utils.data.DataLoader(features, batch_size=batch_size, shuffle=generator is not None,
                                       generator=generator, collate_fn=collate)


@torch.no_grad()
def evaluate(model, loader) -> tuple[float, float]:
    """Dev accuracy and the share of the most predicted class (>= 0.95 is the study's collapse)."""
    model.eval()
    preds, labels = [], []
    for batch in loader:
        labels.append(batch.pop("labels"))
        preds.append(model(**batch).logits.argmax(-1))
    preds, labels = torch.cat(preds), torch.cat(labels)
    return (preds == labels).float().mean().item(), torch.bincount(preds).max().item() / len(preds)


def run_one(args, sparsity: float, seed: int, tokenizer, checkpoint: str) -> dict:
    transformers.set_seed(seed)  # the classifier head's initialisation follows the seed, as in the study
    train_rows = subsample(load_split("sst2", "train", args.data), args.train_samples, seed)
    train_loader = tokenized_batches(tokenizer, train_rows, args.batch_size, args.max_length,
                                     torch.Generator().manual_seed(seed))
    dev_loader = tokenized_batches(tokenizer, load_split("sst2", "dev", args.data), 64, args.max_length)
    total_steps = args.max_steps or len(train_loader) * args.epochs
    warmup_lr_steps = math.ceil(WARMUP_RATIO * total_steps)
    # NNI counts optimizer steps: no mask before step warmup_step + 1, full target at cooldown_begin_step
    warmup_step, cooldown_begin_step = round(WINDOW[0] * total_steps), round(WINDOW[1] * total_steps)

    model = BertForSequenceClassification.from_pretrained(checkpoint, num_labels=2)
    include = re.compile(DEFAULT_INCLUDE)
    targets = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and include.search(name)]
    # HF Trainer's AdamW groups: no weight decay on biases and LayerNorm weights
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    # nni.trace records the constructor arguments, so NNI can rebuild both for the wrapped model
    optimizer = nni.trace(torch.optim.AdamW)([{"params": decay, "weight_decay": args.weight_decay},
                                               {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)

    def linear_with_warmup(step: int) -> float:  # transformers.get_linear_schedule_with_warmup
        if step < warmup_lr_steps:
            return step / max(1, warmup_lr_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_lr_steps))

    scheduler = nni.trace(torch.optim.lr_scheduler.LambdaLR)(optimizer, linear_with_warmup)
    loss_curve = []

    def training_step(batch, model):
        return model(**batch).loss

    def training_func(model, optimizer, training_step, lr_scheduler, max_steps, max_epochs):
        model.train()
        # clip only the model's parameters, as the Trainer does: NNI's scores are extra parameters
        # of the wrapped modules, trained by NNI's own Adam, and stay out of the norm
        params = [p for group in optimizer.param_groups for p in group["params"]]
        step, log_every = 0, max(1, max_steps // 20)
        while step < max_steps:  # epochs until the step budget is spent
            for batch in train_loader:
                loss = training_step(batch, model)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
                optimizer.step()  # patched by NNI: score Adam step before, mask update after
                lr_scheduler.step()
                optimizer.zero_grad()
                step += 1
                if step % log_every == 0 or step == max_steps:
                    masks = pruner.get_masks()
                    zeros = sum((m["weight"] == 0).sum().item() for m in masks.values())
                    mask_sparsity = zeros / sum(m["weight"].numel() for m in masks.values())
                    loss_curve.append({"step": step, "loss": round(loss.item(), 4),
                                       "sparsity": round(mask_sparsity, 4)})
                    print(f"  step {step}/{max_steps} loss {loss.item():.4f} lr {lr_scheduler.get_last_lr()[0]:.2e} "
                          f"mask sparsity {mask_sparsity:.4f}", flush=True)
                if step >= max_steps:
                    return

    evaluator = TorchEvaluator(training_func, optimizer, training_step, lr_schedulers=scheduler)
    # sparse_ratio: top-k of the raw scores in each matrix (NNI's hard movement); sparse_threshold
    # would be its soft variant. granularity [1, 1]: single weights (NNI's default is whole rows).
    config_list = [{"op_names": targets, "target_names": ["weight"], "sparse_ratio": sparsity, "granularity": [1, 1]}]
    pruner = MovementPruner(model, config_list, evaluator, warmup_step=warmup_step,
                            cooldown_begin_step=cooldown_begin_step)
    start = time.perf_counter()
    _, masks = pruner.compress(max_steps=total_steps, max_epochs=None)
    wall_time = time.perf_counter() - start
    pruner.unwrap_model()
    modules = dict(model.named_modules())
    per_layer = {}
    with torch.no_grad():  # bake the final masks into the weights: evaluation sees real zeros
        for name in targets:
            weight = modules[name].weight
            weight.mul_(masks[name]["weight"].to(weight.dtype))
            per_layer[name] = (weight == 0).sum().item() / weight.numel()
    zeros = sum(per_layer[n] * modules[n].weight.numel() for n in targets)
    achieved = zeros / sum(modules[n].weight.numel() for n in targets)
    accuracy, top_class = evaluate(model, dev_loader)
    return {
        "peer": "nni.compression.pruning.MovementPruner", "target_sparsity": sparsity, "seed": seed,
        "accuracy": accuracy, "majority_class_fraction": top_class, "collapsed": top_class >= 0.95,
        "achieved_sparsity": achieved, "per_layer_sparsity": per_layer, "pruned_matrices": len(targets),
        "steps": total_steps, "pruning_window_steps": [warmup_step, cooldown_begin_step],
        "train_examples": len(train_rows), "dev_examples": len(dev_loader.dataset), "wall_time_s": wall_time,
        "loss_curve": loss_curve,
        "training": {"epochs": args.epochs, "batch_size": args.batch_size, "max_length": args.max_length,
                     "learning_rate": args.lr, "weight_decay": args.weight_decay, "warmup_ratio": WARMUP_RATIO,
                     "max_grad_norm": MAX_GRAD_NORM, "max_steps": args.max_steps},
        "environment": {"nni": nni.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                        "python": platform.python_version(), "threads": torch.get_num_threads()},
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sparsities", default="0.5,0.8")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", default="benchmarks/results/peer_movement_nni")
    parser.add_argument("--checkpoint", default="minilm-l6")
    parser.add_argument("--data", default=None, help="GLUE folder holding SST-2/{train,dev}.tsv "
                        "(default: the toolkit's own lookup, as the study's runs)")
    parser.add_argument("--train-samples", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=None, help="cap on optimizer steps (smoke tests); "
                        "the LR schedule and pruning window scale with it")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    args = parser.parse_args(argv)

    checkpoint = resolve_checkpoint(args.checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    out = Path(args.out)
    for seed in [int(s) for s in args.seeds.split(",")]:
        for sparsity in [float(s) for s in args.sparsities.split(",")]:
            path = out / f"nni-movement-s{sparsity:g}-seed{seed}.json"
            if path.exists():
                print(f"{path}: exists, skipped")
                continue
            print(f"NNI movement, sparsity {sparsity:g}, seed {seed}", flush=True)
            result = run_one(args, sparsity, seed, tokenizer, checkpoint)
            write_json_atomic(path, result)
            print(f"  dev accuracy {result['accuracy']:.4f} (top class {result['majority_class_fraction']:.1%}), "
                  f"achieved sparsity {result['achieved_sparsity']:.4f}, {result['wall_time_s']:.0f} s -> {path}",
                  flush=True)
    write_summary(out)


def write_summary(out: Path) -> None:
    """summary.md: one row per finished run (whatever is in --out)."""
    rows = [json.loads(path.read_text()) for path in sorted(out.glob("nni-movement-*.json"))]
    lines = ["| target sparsity | seed | SST-2 dev accuracy | achieved sparsity | collapsed | top class | wall time (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["target_sparsity"], r["seed"])):
        lines.append(f"| {r['target_sparsity']:.0%} | {r['seed']} | {100 * r['accuracy']:.1f} | {r['achieved_sparsity']:.3f} | "
                     f"{'yes' if r['collapsed'] else 'no'} | {r['majority_class_fraction']:.1%} | {r['wall_time_s']:.0f} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
