"""Soft movement pruning (Sanh, Wolf & Rush 2020, section 4).

Scores S are learned by the optimizer through the straight-through estimator
W' = W * (M + S - stop_grad(S)), M = 1[sigmoid(S) > threshold], so dL/dS = dL/dW' * W as in
hard movement. Sparsity is not imposed during the window: it emerges from the regulariser
lambda(t) * mean(sigmoid(S)), whose strength follows the recipe's ``penalty`` schedule. When the
window closes, masks are fixed to exactly the target sparsity by top-k of S.
"""

import torch
from pydantic import BaseModel, ConfigDict, Field

from bermo_prune.pruning.base import Pruner
from bermo_prune.pruning.registry import register_pruner
from pruners.movement import LearnedScoreMask


class SoftMovementOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    score_lr: float = Field(1e-2, gt=0, description="learning rate of the scores")
    init_score: float = Field(1.0, description="initial score: sigmoid(1) = 0.73 keeps every weight at start")
    threshold: float = Field(0.5, gt=0, lt=1, description="keep a weight while sigmoid(S) > threshold")


class ThresholdMask(LearnedScoreMask):
    """Learned scores whose mask, until it is fixed, is sigmoid(S) > threshold."""

    def __init__(self, shape, init_score, threshold, device=None):
        super().__init__(shape, init_score, device=device)
        self.threshold = threshold

    def hard_mask(self):
        return torch.sigmoid(self.scores) > self.threshold


@register_pruner
class SoftMovementPruner(Pruner):
    name = "soft_movement"
    Options = SoftMovementOptions

    def make_parametrization(self, name, module):
        o = self.options
        return ThresholdMask(module.weight.shape, o.init_score, o.threshold, device=module.weight.device)

    def update(self, sparsity):
        pass  # sparsity emerges from the penalty until the window closes

    def scores(self):
        return {name: p.scores.detach() for name, p in self.parametrizations().items()}

    def on_freeze(self):
        for p in self.parametrizations().values():
            p.fix()

    def penalty(self):
        weight = self.current_penalty_weight()
        if self.frozen or weight == 0:
            return None
        params = self.parametrizations().values()
        total = sum(torch.sigmoid(p.scores).sum() for p in params)
        return weight * total / sum(p.scores.numel() for p in params)

    def param_groups(self):
        scores = [p.scores for p in self.parametrizations().values()]
        return [{"params": scores, "lr": self.options.score_lr, "weight_decay": 0.0}]

    def current_sparsity(self):
        if self.frozen:
            return super().current_sparsity()
        params = self.parametrizations().values()
        kept = sum(int((torch.sigmoid(p.scores) > p.threshold).sum()) for p in params)
        return 1 - kept / sum(p.scores.numel() for p in params)
