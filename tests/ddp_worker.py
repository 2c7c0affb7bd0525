"""Run under ``torchrun --nproc_per_node 2`` by test_distributed.py: prunes the tiny checkpoint
with each pruner named on the command line and saves every rank's final weights, so the test can
check that all ranks ended with the same masks."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from bermo_prune.models import load_classifier
from bermo_prune.pruning.registry import get_pruner_class
from bermo_prune.recipes import load_recipe
from bermo_prune.train import train_and_evaluate


def main(checkpoint: str, glue: str, out: str, *recipes: str) -> None:
    for recipe_path in recipes:
        recipe = load_recipe(Path(recipe_path))
        torch.manual_seed(0)
        model, tokenizer = load_classifier(checkpoint, "bert", num_labels=2)
        result = train_and_evaluate(model, tokenizer, "sst2", recipe.training, Path(out) / "scratch", seed=0,
                                    data_dir=glue, pruner=get_pruner_class(recipe.pruner.name)(recipe), progress=False)
        rank = dist.get_rank()
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(Path(out) / f"{recipe.pruner.name}-rank{rank}.safetensors"),
                  metadata={"targeted_sparsity": str(result.sparsity["targeted"]), "world_size": str(dist.get_world_size())})


if __name__ == "__main__":
    main(*sys.argv[1:])
