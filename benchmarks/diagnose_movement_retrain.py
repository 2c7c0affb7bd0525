"""Does MiniLM-L6 recover from movement-chosen masks when they stay fixed and it keeps training?

The one-shot probe (diagnose_movement.py) removes weights without retraining. This one fine-tunes
the pretrained MiniLM-L6 (BERT) on 8,000 SST-2 examples for BASE steps exactly as that script does
(AdamW 5e-5, 50-step warm-up, linear decay to step 500, clipping 1.0) while accumulating the
movement score S = -sum_t dL/dW * W; then, for each score and sparsity, it restores the state at
BASE steps, prunes every encoder Linear weight matrix once (per matrix), keeps those masks fixed and
trains on to step 500; it prints one JSON line per case (dev accuracy right after pruning and at
step 500, and the mean training loss over every 25 steps).

    OMP_NUM_THREADS=2 python benchmarks/diagnose_movement_retrain.py BASE SPARSITIES KINDS
    e.g. python benchmarks/diagnose_movement_retrain.py 150 0.05,0.3 movement,random

KINDS among movement (lowest S pruned), random, magnitude, abs_movement (lowest |S| pruned).
"""
import copy
import json
import sys
from pathlib import Path

import torch
from transformers import DataCollatorWithPadding

sys.path.insert(0, str(Path(__file__).resolve().parent))  # diagnose_movement beside it
from diagnose_movement import accuracy, batches, study_optimizer, train_step  # noqa: E402

from bermo_prune.data import load_split, subsample, tokenize_dataset  # noqa: E402
from bermo_prune.models import load_classifier  # noqa: E402
from bermo_prune.pruning.masks import select_modules, topk_masks  # noqa: E402
from bermo_prune.recipes import DEFAULT_INCLUDE  # noqa: E402

TOTAL = 500


def main():
    base = int(sys.argv[1]) if len(sys.argv) > 1 else 150
    cases = [(kind, float(s)) for s in sys.argv[2].split(",") for kind in sys.argv[3].split(",")]
    torch.manual_seed(0)
    model, tokenizer = load_classifier("minilm-l6", "bert", num_labels=2)
    train = tokenize_dataset(subsample(load_split("sst2", "train"), 8000, 0), tokenizer, "sst2", 64)
    dev = tokenize_dataset(load_split("sst2", "dev"), tokenizer, "sst2", 64)
    collate = DataCollatorWithPadding(tokenizer)
    modules = select_modules(model, [DEFAULT_INCLUDE])
    movement = {n: torch.zeros_like(m.weight) for n, m in modules.items()}
    optimizer, schedule, _ = study_optimizer(model, TOTAL)
    generator = torch.Generator().manual_seed(0)

    def stream():
        while True:
            yield from batches(train, collate, 32, generator)

    def accumulate_movement():
        for n, m in modules.items():
            movement[n].sub_(m.weight.grad * m.weight)

    batch_stream = stream()
    model.train()
    for _ in range(base):
        loss = train_step(model, next(batch_stream), optimizer, schedule, accumulate_movement)
    print("base", base, "loss", float(loss), "dev", accuracy(model, dev, collate), flush=True)
    state = copy.deepcopy((model.state_dict(), optimizer.state_dict(), schedule.state_dict(), generator.get_state()))
    weights = {n: m.weight.detach().clone() for n, m in modules.items()}
    scores = {"movement": movement,
              "random": {n: torch.rand(w.shape, generator=torch.Generator().manual_seed(7)) for n, w in weights.items()},
              "magnitude": {n: w.abs() for n, w in weights.items()},
              "abs_movement": {n: s.abs() for n, s in movement.items()}}
    for kind, sparsity in cases:
        model.load_state_dict(state[0])
        optimizer.load_state_dict(state[1])
        schedule.load_state_dict(state[2])
        generator.set_state(state[3])
        masks = topk_masks(scores[kind], sparsity, "per_layer")

        def apply_masks():
            for n, m in modules.items():
                m.weight.mul_(masks[n])

        def mask_gradients():
            for n, m in modules.items():
                m.weight.grad.mul_(masks[n])

        with torch.no_grad():
            apply_masks()
        acc_one_shot = accuracy(model, dev, collate)
        losses = []
        for _ in range(base, TOTAL):
            losses.append(float(train_step(model, next(batch_stream), optimizer, schedule, mask_gradients)))
            with torch.no_grad():
                apply_masks()  # AdamW's momentum would move pruned weights off zero
        curve = [round(sum(losses[i:i + 25]) / 25, 3) for i in range(0, len(losses), 25)]
        print(json.dumps({"kind": kind, "sparsity": sparsity, "acc_one_shot": acc_one_shot,
                          "acc_after": accuracy(model, dev, collate), "loss_every_25": curve}), flush=True)


if __name__ == "__main__":
    main()
