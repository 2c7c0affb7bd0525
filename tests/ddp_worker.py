"""Run under ``torchrun --nproc_per_node 2`` by test_distributed.py: prunes the tiny checkpoint
with each pruner named on the command line and saves every rank's final weights, so the test can
check that all ranks ended with the same masks."""

import functools
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from bermo_prune.models import load_classifier
from bermo_prune.pruning.registry import get_pruner_class
from bermo_prune.recipes import load_recipe
from bermo_prune.train import train_and_evaluate


def poison_from_call(model, calls: int) -> None:
    """From its ``calls``-th forward on, the model's logits (and so its loss) are NaN."""
    forward, seen = model.forward, []

    @functools.wraps(forward)  # the Trainer keeps the dataset columns the forward's signature names
    def poisoned(*args, **kwargs):
        output = forward(*args, **kwargs)
        seen.append(1)
        if len(seen) >= calls:
            output.logits = output.logits * float("nan")
            if output.loss is not None:
                output.loss = output.loss * float("nan")
        return output

    model.forward = poisoned


def main(checkpoint: str, glue: str, out: str, *recipes: str) -> None:
    for recipe_path in recipes:
        recipe = load_recipe(Path(recipe_path))
        torch.manual_seed(0)
        model, tokenizer = load_classifier(checkpoint, "bert", num_labels=2)
        if Path(recipe_path).stem.startswith("nan-on-rank1") and os.environ["RANK"] == "1":  # before init_process_group
            poison_from_call(model, 3)
        result = train_and_evaluate(model, tokenizer, "sst2", recipe.training, Path(out) / "scratch", seed=0,
                                    data_dir=glue, pruner=get_pruner_class(recipe.pruner.name)(recipe), progress=False)
        rank = dist.get_rank()
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(Path(out) / f"{Path(recipe_path).stem}-rank{rank}.safetensors"),
                  metadata={"targeted_sparsity": str(result.sparsity["targeted"]), "world_size": str(dist.get_world_size()),
                            "status": result.status, "reason": str(result.reason)})


if __name__ == "__main__":
    main(*sys.argv[1:])
