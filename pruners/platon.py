"""PLATON (Zhang et al., ICML 2022, "PLATON: Pruning Large Transformer Models with Upper
Confidence Bound of Weight Importance").

Each weight's importance is its first-order sensitivity, I = |W' * dL/dW'| on the masked weight
W' = W * M, smoothed over steps, together with how uncertain that estimate is:

    I_bar <- beta1 * I_bar + (1 - beta1) * I
    U_bar <- beta2 * U_bar + (1 - beta2) * |I - I_bar|        (with the I_bar just updated)
    score  = I_bar * U_bar

and every ``update_every`` steps of the window the top-k scores are kept (global by default, as
the authors' code). A weight the task's gradient finds important in one batch but not the next
has a large U: the product keeps weights that are important *or* not yet well measured, the
upper-confidence-bound idea of the paper. Defaults (beta1 0.85, beta2 0.95, masks every 10 steps)
are the authors' GLUE settings.

The statistics are updated once per optimizer step, from the accumulated and clipped gradient
the optimizer is about to apply (the authors read ``p.grad`` right after the step, before it is
zeroed). A masked weight has W' = 0, so its importance decays and it stays pruned, as in the
authors' code, which zeroes pruned weights outright. Under DistributedDataParallel the gradients
are already averaged, so every process computes the same statistics. They are buffers of the
parametrisation: checkpoints carry them and ``--resume`` continues them. Cost: two buffers and a
handful of element-wise operations per targeted weight and step; nothing after the freeze.
"""

import torch
from pydantic import Field

from bermo_prune.pruning import masks as M
from bermo_prune.pruning.base import Pruner, PrunerOptions
from bermo_prune.pruning.registry import register_pruner


class PlatonOptions(PrunerOptions):
    beta1: float = Field(0.85, ge=0, lt=1, description="smoothing of the sensitivity I_bar")
    beta2: float = Field(0.95, ge=0, lt=1, description="smoothing of its uncertainty U_bar")


class PlatonMask(M.MaskedWeight):
    def __init__(self, shape, device=None):
        super().__init__(shape, device=device)
        self.register_buffer("importance", torch.zeros(shape, device=device))
        self.register_buffer("uncertainty", torch.zeros(shape, device=device))


@register_pruner
class PlatonPruner(Pruner):
    name = "platon"
    Options = PlatonOptions

    def make_parametrization(self, name, module):
        return PlatonMask(module.weight.shape, device=module.weight.device)

    def before_optimizer_step(self):
        if self.frozen:
            return
        b1, b2 = self.options.beta1, self.options.beta2
        with torch.no_grad():
            for module in self.modules.values():
                grad = M.original_weight(module).grad  # dL/dW = dL/dW' * M
                if grad is None:
                    continue
                p = M.parametrization_of(module)
                sensitivity = (M.original_weight(module) * p.mask * grad).abs_()
                p.importance.mul_(b1).add_(sensitivity, alpha=1 - b1)
                p.uncertainty.mul_(b2).add_(sensitivity.sub_(p.importance).abs_(), alpha=1 - b2)

    def scores(self):
        return {name: p.importance * p.uncertainty for name, p in self.parametrizations().items()}

    def score_steps(self):
        return self.schedule.start_step  # statistics gather from the first step; the first mask opens the window
