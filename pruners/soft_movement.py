"""Soft movement pruning (Sanh, Wolf & Rush 2020, section 4).

Scores S are learned by the optimizer through the straight-through estimator
W' = W * (M + S - stop_grad(S)), M = 1[sigmoid(S) > threshold], so dL/dS = dL/dW' * W as in
hard movement. Sparsity is not imposed during the window: it emerges from the regulariser
lambda * mean(sigmoid(S)), which acts inside the pruning window. When the window closes, masks
are fixed to exactly the target sparsity by top-k of S.

How strong lambda must be depends on the run (the authors tune it per task, tens to hundreds on
their mean of sigmoid(S)); the recipe's ``schedule`` says which sparsity the run should reach when.
With ``strength: feedback`` (the default) lambda is set by feedback after every step so that the
threshold sparsity follows that schedule (``bermo_prune.pruning.feedback``): the penalty, not the
freeze, does the pruning. ``strength: schedule`` is the paper's plain form, lambda ramped by the
recipe's ``penalty`` schedule; the sparsity reached is then whatever that lambda gives.

The scores learn inside the window only, from ``init_score`` = 0.1 (all weights kept). Adam moves
a score by about ``score_lr`` per step once one gradient dominates it, so a score takes about
init_score / score_lr steps to cross the threshold: the delay between lambda and the sparsity it
causes. Measured on MiniLM-L6 / SST-2 at 90%: from 0.5 (about 50 steps) with a gain of 2 the
feedback raised lambda ten-thousandfold before the first weights fell, and the sparsity then ran
36 points ahead of the schedule; from 0.1 with a gain of 0.5 it stayed within about 4 points of
the schedule through the window (93.8% against 90% when the masks were fixed). Before the window the masks are all ones and the scores
stay where they start, so that the task gradient alone does not carry them across the threshold
while the schedule asks for no sparsity.
"""

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from bermo_prune.errors import BermoPruneError
from bermo_prune.pruning.base import Pruner
from bermo_prune.pruning.feedback import FeedbackStrength
from bermo_prune.pruning.registry import register_pruner
from .movement import LearnedScoreMask


class SoftMovementOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    score_lr: float = Field(1e-2, gt=0, description="learning rate of the scores")
    init_score: float = Field(0.1, description="initial score: sigmoid(0.1) = 0.52 keeps every weight at start")
    threshold: float = Field(0.5, gt=0, lt=1, description="keep a weight while sigmoid(S) > threshold")
    strength: Literal["feedback", "schedule"] = Field(
        "feedback", description="feedback: lambda follows the sparsity schedule; schedule: the recipe's penalty ramp")
    initial_lambda: float = Field(10.0, gt=0, description="feedback: lambda when the window opens")
    max_lambda: float = Field(1e3, gt=0, description="feedback: upper bound of lambda")
    gain: float = Field(0.5, gt=0, description="feedback: log(lambda) change per step and unit of sparsity gap")


class ThresholdMask(LearnedScoreMask):
    """Learned scores whose mask, until it is fixed, is sigmoid(S) > threshold."""

    def __init__(self, shape, init_score, threshold, device=None):
        super().__init__(shape, init_score, device=device)
        self.threshold = threshold
        self.learning = True  # False: the scores get no gradient (outside the window)

    def hard_mask(self):
        return torch.sigmoid(self.scores) > self.threshold

    def forward(self, weight):
        if self.learning or self.fixed:
            return super().forward(weight)
        return weight * self.hard_mask().to(weight.dtype)


@register_pruner
class SoftMovementPruner(Pruner):
    name = "soft_movement"
    Options = SoftMovementOptions

    def __init__(self, recipe):
        super().__init__(recipe)
        o = self.options
        if o.strength == "feedback" and recipe.penalty is not None:
            raise BermoPruneError("soft_movement: a recipe penalty ramp is used with options.strength 'schedule' only "
                                  "(with 'feedback', lambda follows the sparsity schedule): remove penalty or set strength")
        if o.strength == "schedule" and recipe.penalty is None:
            raise BermoPruneError("soft_movement with options.strength 'schedule' needs a recipe penalty (its lambda ramp)")
        self.strength = FeedbackStrength(o.initial_lambda, o.gain, min(o.initial_lambda, 1e-3), o.max_lambda)

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

    def current_lambda(self) -> float:
        if self.options.strength == "schedule":
            return self.current_penalty_weight()
        return self.strength.value if self.schedule.in_window(self.step) else 0.0

    def loss_terms(self):
        weight = self.current_lambda()
        if self.frozen or weight == 0:
            return {}
        params = self.parametrizations().values()
        total = sum(torch.sigmoid(p.scores).sum() for p in params)
        return {"penalty": weight * total / sum(p.scores.numel() for p in params)}

    def on_attach(self):
        self._learn_in_window()

    def on_step_end(self, step):
        super().on_step_end(step)
        self._learn_in_window()
        if self.options.strength == "feedback" and not self.frozen and self.schedule.in_window(step):
            self.strength.update(self.schedule(step), self.current_sparsity())

    def _learn_in_window(self):
        for p in self.parametrizations().values():
            p.learning = self.schedule.in_window(self.step)

    def score_steps(self):
        return 0  # the scores learn inside the window, where the threshold masks from the first step

    def state_summary(self):
        return {} if self.frozen else {"lambda": self.current_lambda()}

    def state_dict(self):
        return {**super().state_dict(), "lambda.log_value": self.strength.log_value.clone()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self._learn_in_window()
        if "lambda.log_value" in state:  # absent in checkpoints of older versions
            self.strength.load_state_dict({"log_value": state["lambda.log_value"]})

    def param_groups(self):
        scores = [p.scores for p in self.parametrizations().values()]
        return [{"params": scores, "lr": self.options.score_lr, "weight_decay": 0.0}]

    def current_sparsity(self):
        if self.frozen:
            return super().current_sparsity()
        params = self.parametrizations().values()
        kept = sum(int((torch.sigmoid(p.scores) > p.threshold).sum()) for p in params)
        return 1 - kept / sum(p.scores.numel() for p in params)
