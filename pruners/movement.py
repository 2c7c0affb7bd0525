"""Hard top-k movement pruning (Sanh, Wolf & Rush 2020, "Movement Pruning").

Scores accumulate S <- S - dL/dW' * W at every backward pass, W' = W * M being the masked weight
(the straight-through estimator of the paper, eq. 4 with plain accumulation). Weights that move
away from zero gain score; every ``update_every`` steps the top-k scores are kept.

Accumulating inside backward keeps the scores out of the optimizer and out of gradient
clipping, and costs one multiply-add per weight. Under DistributedDataParallel each process
accumulates the movement of its own batches; ``sync`` averages them before masks are chosen.

``scores: learned`` follows the authors' code instead: S is a parameter (initially zero) that
the optimizer trains at ``score_lr`` through the same straight-through gradient dL/dW' * W,
so Adam normalises each score's steps rather than summing raw products.

``score_warmup`` lets the scores learn before the first mask, as the authors' ``initial_warmup``:
the masks stay all ones until it ends, and the pruning window then starts no earlier (its end is
kept, so the same sparsity is reached in a shorter window). A value below 1 is a fraction of the
run's optimizer steps, a value of 1 or more a number of steps.

``regrow: false`` keeps masks nested: a pruned weight stays pruned even if its score rises again
(the paper's top-k lets it back).

Measured on MiniLM-L6 / SST-2 (benchmarks/results/movement_diagnosis and movement_budget): hard
movement collapses BERT to one class at 50% on the study's 500 steps, on one and on four full
epochs of the 67k training sentences (2,105 and 8,420 steps), with nested masks and with masks
recomputed every step alike; NNI 3.0's movement pruner collapses on the study's budget too. On
four epochs the first increment, 0.3% of each matrix chosen by 842 steps of scores, sent the task
loss from 0.25 to chance. Random masks at 5-10% cost 1-4 points. Use soft_movement, l0 or
magnitude on such budgets.
"""

import dataclasses
from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from bermo_prune.pruning.base import Pruner, PrunerOptions
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


class MovementOptions(PrunerOptions):
    scores: Literal["accumulated", "learned"] = Field("accumulated", description="how scores follow -W * dL/dW'")
    score_lr: float = Field(1e-2, gt=0, description="learning rate of learned scores")
    score_warmup: float = Field(0.0, ge=0, description="steps (>= 1) or fraction of the run (< 1) the scores "
                                "learn before the first mask; the pruning window starts no earlier")
    regrow: bool = Field(True, description="whether a pruned weight comes back when its score rises again "
                         "(the paper's top-k); false keeps masks nested along the schedule")

    @field_validator("score_warmup")
    @classmethod
    def _whole_steps(cls, value):
        if value >= 1 and not float(value).is_integer():
            raise ValueError("score_warmup is a fraction of the run (< 1) or a whole number of steps (>= 1)")
        return value


class MovementMask(nn.Module):
    def __init__(self, shape, device=None):
        super().__init__()
        self.register_buffer("mask", torch.ones(shape, device=device))
        self.register_buffer("scores", torch.zeros(shape, device=device))

    def forward(self, weight):
        if torch.is_grad_enabled() and weight.requires_grad:
            return _MaskAndAccumulate.apply(weight, self.mask, self.scores)
        return weight * self.mask


class LearnedScoreMask(nn.Module):
    """W' = W * (M + S - stop_grad(S)) with S a trained parameter: the value is W * M, and
    dL/dS = dL/dW' * W (the straight-through estimator). M is the ``mask`` buffer, set by the
    pruner; subclasses may derive it from S instead (``hard_mask``). Once ``fix``-ed, only the
    buffer counts and S stops training."""

    def __init__(self, shape, init_score: float = 0.0, device=None):
        super().__init__()
        self.scores = nn.Parameter(torch.full(shape, float(init_score), device=device))
        self.register_buffer("mask", torch.ones(shape, device=device))
        self.fixed = False

    def hard_mask(self) -> torch.Tensor:
        return self.mask

    def forward(self, weight):
        if self.fixed:
            return weight * self.mask
        hard = self.hard_mask().to(weight.dtype)
        if not torch.is_grad_enabled():
            return weight * hard
        return weight * (hard + self.scores - self.scores.detach())

    def fix(self) -> None:
        self.fixed = True
        self.scores.requires_grad_(False)


@register_pruner
class MovementPruner(Pruner):
    name = "movement"
    Options = MovementOptions
    # Measured on MiniLM-L6 / SST-2 (benchmarks/results/movement_diagnosis): one-shot masks from
    # movement accumulated over 150 steps sent the model to chance at 10% sparsity, where random
    # masks kept 81% (with either sign of the score, Adam-normalised or not), while |S| kept 82.5;
    # 220 steps of scores before the first mask (one full epoch) did not help either. The authors'
    # SQuAD recipe trains scores ~5,400 steps before the first mask.
    min_score_steps = 1000

    def set_total_steps(self, total_steps):
        super().set_total_steps(total_steps)
        warmup = self.options.score_warmup
        steps = round(warmup * total_steps) if warmup < 1 else int(warmup)
        s = self.schedule
        if steps > s.start_step and s.shape != "constant":
            self.schedule = dataclasses.replace(s, start_step=min(steps, s.end_step))

    def score_steps(self):
        return self.schedule.start_step  # scores learn from the first step; the first mask opens the window

    @property
    def learned(self) -> bool:
        return self.options.scores == "learned"

    def make_parametrization(self, name, module):
        mask_class = LearnedScoreMask if self.learned else MovementMask
        return mask_class(module.weight.shape, device=module.weight.device)

    def scores(self):
        if self.options.regrow:
            return {name: p.scores.detach() for name, p in self.parametrizations().items()}
        return {name: p.scores.detach().masked_fill(p.mask == 0, float("-inf"))
                for name, p in self.parametrizations().items()}

    def sync(self):
        if not self.learned:  # learned scores are parameters: DDP already averages their gradients
            average_(p.scores for p in self.parametrizations().values())

    def param_groups(self):
        if not self.learned:
            return []
        scores = [p.scores for p in self.parametrizations().values()]
        return [{"params": scores, "lr": self.options.score_lr, "weight_decay": 0.0}]

    def on_freeze(self):
        if self.learned:
            for p in self.parametrizations().values():
                p.fix()
