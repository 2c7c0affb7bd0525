"""Why hard movement pruning collapsed MiniLM-L6 on the study's budget: how much do one-shot
masks chosen from movement scores hurt, against magnitude and random masks, after N steps?

Fine-tunes the pretrained MiniLM-L6 (BERT) on 8,000 SST-2 examples (bs 32, len 64, AdamW 5e-5,
10% linear warm-up, gradient clipping 1.0, as the study's runs) while accumulating the movement
score S = -sum_t dL/dW * W of every encoder Linear weight, without masking. At the given steps it
applies one-shot per-layer masks (no retraining) from: accumulated movement scores (from step 0,
and from the end of the learning-rate warm-up on), the same scores divided by |W| (the direction
alone), the sign consistency S / sum_t |dL/dW * W|, Adam-normalised scores (what ``scores:
learned`` trains), the weights' actual movement W * (W - W_0), movement reversed (pruning the
weights that move *away* from zero), |S| (pruning the weights that moved least in either
direction: the first-order saliency |sum_t dL/dW * W| of Molchanov et al.), |W|, and uniform
random scores; and records dev accuracy, the median |W| percentile of the weights each score
prunes, and how concentrated the pruning is in a few input columns (the share of the pruned
weights that fall in the 5% of columns that lose most).

    OMP_NUM_THREADS=2 python benchmarks/diagnose_movement.py --out benchmarks/results/movement_diagnosis
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from transformers import DataCollatorWithPadding

from bermo_prune.data import load_split, subsample, tokenize_dataset
from bermo_prune.models import load_classifier
from bermo_prune.pruning.masks import select_modules, topk_masks
from bermo_prune.recipes import DEFAULT_INCLUDE


def batches(dataset, collate, batch_size, generator):
    order = torch.randperm(len(dataset), generator=generator).tolist()
    for start in range(0, len(order) - batch_size + 1, batch_size):
        batch = collate([dataset[i] for i in order[start : start + batch_size]])
        batch.pop("length", None)
        yield batch


@torch.inference_mode()
def accuracy(model, dev, collate) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(dev), 128):
        batch = collate([dev[i] for i in range(start, min(start + 128, len(dev)))])
        batch.pop("length", None)
        labels = batch.pop("labels")
        correct += int((model(**batch).logits.argmax(-1) == labels).sum())
    model.train()
    return correct / len(dev)


def study_optimizer(model, total: int):
    """AdamW 5e-5 with the study's learning-rate schedule: linear warm-up over 10% of max(total, 500)
    steps, then linear decay to 0 at that step."""
    horizon = max(total, 500)
    warmup = math.ceil(0.1 * horizon)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (horizon - s) / (horizon - warmup))))
    return optimizer, schedule, warmup


def train_step(model, batch, optimizer, schedule, after_backward=None) -> torch.Tensor:
    """One step of the study's dense training (clipping 1.0); ``after_backward`` sees the raw
    gradients before clipping (to accumulate movement scores or mask gradients)."""
    loss = model(**batch).loss
    loss.backward()
    if after_backward is not None:
        with torch.no_grad():
            after_backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad()
    return loss


def masked_accuracy(model, modules, masks, dev, collate) -> float:
    saved = {name: m.weight.detach().clone() for name, m in modules.items()}
    with torch.no_grad():
        for name, m in modules.items():
            m.weight.mul_(masks[name])
    acc = accuracy(model, dev, collate)
    with torch.no_grad():
        for name, m in modules.items():
            m.weight.copy_(saved[name])
    return acc


def pruned_magnitude_percentile(modules, masks) -> float:
    """Median, over layers, of the mean |W| percentile (within its layer) of the pruned weights."""
    values = []
    for name, m in modules.items():
        w = m.weight.detach().abs().reshape(-1)
        ranks = torch.argsort(torch.argsort(w)).float() / (w.numel() - 1)
        pruned = masks[name].reshape(-1) == 0
        if pruned.any():
            values.append(float(ranks[pruned].mean()))
    return float(torch.tensor(values).median())


def column_concentration(masks) -> float:
    """Median over layers of the share of pruned weights in the 5% of input columns losing most."""
    shares = []
    for mask in masks.values():
        per_column = (mask == 0).float().sum(0)
        top = per_column.topk(max(1, per_column.numel() // 20)).values.sum()
        if per_column.sum() > 0:
            shares.append(float(top / per_column.sum()))
    return float(torch.tensor(shares).median())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", default="50,150")
    parser.add_argument("--sparsities", default="0.1,0.3,0.5")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-samples", type=int, default=8000, help="0: the whole train split")
    args = parser.parse_args()
    checkpoints = sorted(int(s) for s in args.steps.split(","))
    sparsities = [float(s) for s in args.sparsities.split(",")]

    torch.manual_seed(args.seed)
    model, tokenizer = load_classifier("minilm-l6", "bert", num_labels=2)
    train = tokenize_dataset(subsample(load_split("sst2", "train"), args.train_samples or None, args.seed), tokenizer, "sst2", 64)
    dev = tokenize_dataset(load_split("sst2", "dev"), tokenizer, "sst2", 64)
    collate = DataCollatorWithPadding(tokenizer)
    modules = select_modules(model, [DEFAULT_INCLUDE])
    scores = {name: torch.zeros_like(m.weight) for name, m in modules.items()}
    late = {name: torch.zeros_like(m.weight) for name, m in modules.items()}
    absolute = {name: torch.zeros_like(m.weight) for name, m in modules.items()}
    adam_m = {name: torch.zeros_like(m.weight) for name, m in modules.items()}
    adam_v = {name: torch.zeros_like(m.weight) for name, m in modules.items()}
    adam_s = {name: torch.zeros_like(m.weight) for name, m in modules.items()}
    start_weights = {name: m.weight.detach().clone() for name, m in modules.items()}

    total = checkpoints[-1]
    per_epoch = len(train) // 32
    optimizer, schedule, warmup = study_optimizer(model, total)
    generator = torch.Generator().manual_seed(args.seed)

    def accumulate_scores(step):
        for name, m in modules.items():
            movement = m.weight.grad * m.weight
            scores[name].sub_(movement)
            absolute[name].add_(movement.abs())
            if step >= warmup:
                late[name].sub_(movement)
            adam_m[name].mul_(0.9).add_(movement, alpha=0.1)
            adam_v[name].mul_(0.999).addcmul_(movement, movement, value=0.001)
            m_hat, v_hat = adam_m[name] / (1 - 0.9 ** (step + 1)), adam_v[name] / (1 - 0.999 ** (step + 1))
            adam_s[name].sub_(m_hat / (v_hat.sqrt() + 1e-8))

    rows, step, started = [], 0, time.time()
    model.train()
    while step < total:
        for batch in batches(train, collate, 32, generator):
            loss = train_step(model, batch, optimizer, schedule, lambda: accumulate_scores(step))
            step += 1
            if step in checkpoints:
                row = {"step": step, "train_loss": float(loss), "dense": accuracy(model, dev, collate)}
                weights = {name: m.weight.detach() for name, m in modules.items()}
                kinds = {
                    "movement": scores,
                    "movement_direction": {n: s / (weights[n].abs() + 1e-12) for n, s in scores.items()},
                    "sign_consistency": {n: s / (absolute[n] + 1e-20) for n, s in scores.items()},
                    "movement_reversed": {n: -s for n, s in scores.items()},
                    "movement_abs": {n: s.abs() for n, s in scores.items()},
                    "movement_after_warmup": late,
                    "movement_adam": adam_s,
                    "actual_movement": {n: w * (w - start_weights[n]) for n, w in weights.items()},
                    "magnitude": {n: w.abs() for n, w in weights.items()},
                    "random": {n: torch.rand(w.shape, generator=torch.Generator().manual_seed(7)) for n, w in weights.items()},
                }
                for sparsity in sparsities:
                    for kind, s in kinds.items():
                        masks = topk_masks(s, sparsity, "per_layer")
                        row[f"{kind}@{sparsity:g}"] = masked_accuracy(model, modules, masks, dev, collate)
                        row[f"{kind}@{sparsity:g}_pruned_abs_w_percentile"] = pruned_magnitude_percentile(modules, masks)
                        row[f"{kind}@{sparsity:g}_column_share"] = column_concentration(masks)
                row["elapsed_s"] = round(time.time() - started, 1)
                rows.append(row)
                print(json.dumps(row), flush=True)
                Path(args.out).mkdir(parents=True, exist_ok=True)
                (Path(args.out) / "one_shot_masks.json").write_text(json.dumps(rows, indent=1) + "\n")
            if step >= total:
                break
        if step and step % per_epoch == 0 and step >= total:
            break


if __name__ == "__main__":
    main()
