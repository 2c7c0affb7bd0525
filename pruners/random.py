"""Random pruning: the control every quality table carries.

Masks follow the same schedule and exact top-k as every other pruner, but the ranking of the
weights is random, so a random run measures what the schedule, the budget and the retraining
alone give at a sparsity. It is the floor: a pruner whose masks hurt as much as random ones (or
more) has learned nothing about which weights matter, whatever sparsity it reaches.

The ranking is drawn once, at attach, and kept: the kept set at a higher sparsity is a subset of
the kept set at a lower one, so masks are nested along the schedule as with magnitude pruning of
fixed weights. It is a random permutation rather than independent uniform numbers because
uniforms tie (float32 has 2^24 values in [0, 1)) and torch.topk may break ties differently from
one sparsity to the next. It comes from a generator of its own seeded with the run's seed
(``runs`` seeds torch before loading the model), so the global RNG stream that initialises the
classifier and orders batches is left untouched, and a seed fixes the masks. The ranking is a
buffer of the parametrisation, so checkpoints carry it and ``--resume`` restores it.
"""

import functools

import torch

from bermo_prune.pruning import masks as M
from bermo_prune.pruning.base import Pruner
from bermo_prune.pruning.registry import register_pruner


# float32 holds every integer rank exactly up to 2^24; larger models keep their ranks in float64.
EXACT_FLOAT32_RANKS = 2**24


class RandomScoreMask(M.MaskedWeight):
    def __init__(self, shape, dtype=torch.float32, device=None):
        super().__init__(shape, device=device)
        self.register_buffer("scores", torch.zeros(shape, dtype=dtype, device=device))


@register_pruner
class RandomPruner(Pruner):
    name = "random"

    def make_parametrization(self, name, module):
        return RandomScoreMask(module.weight.shape, dtype=self._rank_dtype, device=module.weight.device)

    @functools.cached_property
    def _rank_dtype(self) -> torch.dtype:  # one pruner, one model: the targeted modules do not change
        total = sum(m.weight.numel() for m in self.modules.values())
        return torch.float32 if total <= EXACT_FLOAT32_RANKS else torch.float64

    def on_attach(self):
        generator = torch.Generator().manual_seed(torch.initial_seed())
        params = list(self.parametrizations().values())
        ranks = torch.randperm(sum(p.scores.numel() for p in params), generator=generator)
        with torch.no_grad():
            for p, part in zip(params, ranks.split([p.scores.numel() for p in params])):
                p.scores.copy_(part.view_as(p.scores))

    def scores(self):
        return {name: p.scores for name, p in self.parametrizations().items()}
