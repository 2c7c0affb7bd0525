"""Hard top-k movement pruning (Sanh, Wolf & Rush 2020, "Movement Pruning").

Scores accumulate S <- S - dL/dW' * W at every backward pass, W' = W * M being the masked weight
(the straight-through estimator of the paper, eq. 4 with plain accumulation). Weights that move
away from zero gain score; every ``update_every`` steps the top-k scores are kept.

Accumulating inside backward keeps the scores out of the optimizer and out of gradient
clipping, and costs one multiply-add per weight. Under DistributedDataParallel each process
accumulates the movement of its own batches; ``sync`` averages them before masks are chosen.
"""

import torch
from torch import nn

from bermo_prune.pruning.base import Pruner
from bermo_prune.pruning.distributed import average_
from bermo_prune.pruning.registry import register_pruner


class _MaskAndAccumulate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, mask, scores):
        ctx.save_for_backward(weight, mask)
        ctx.scores = scores
        return weight * mask

    @staticmethod
    def backward(ctx, grad_output):
        weight, mask = ctx.saved_tensors
        ctx.scores.sub_(grad_output * weight)
        return grad_output * mask, None, None


class MovementMask(nn.Module):
    def __init__(self, shape, device=None):
        super().__init__()
        self.register_buffer("mask", torch.ones(shape, device=device))
        self.register_buffer("scores", torch.zeros(shape, device=device))

    def forward(self, weight):
        if torch.is_grad_enabled() and weight.requires_grad:
            return _MaskAndAccumulate.apply(weight, self.mask, self.scores)
        return weight * self.mask


@register_pruner
class MovementPruner(Pruner):
    name = "movement"

    def make_parametrization(self, name, module):
        return MovementMask(module.weight.shape, device=module.weight.device)

    def scores(self):
        return {name: p.scores for name, p in self.parametrizations().items()}

    def sync(self):
        average_(p.scores for p in self.parametrizations().values())
