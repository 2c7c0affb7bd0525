"""Soft movement pruning (Sanh, Wolf & Rush 2020, section 4).

Scores S are learned by the optimizer through the straight-through estimator
W' = W * (M + S - stop_grad(S)), M = 1[sigmoid(S) > threshold], so dL/dS = dL/dW' * W as in
hard movement. Sparsity is not imposed during the window: it emerges from the regulariser
lambda * mean(sigmoid(S)). When the window closes, masks are fixed to exactly the target sparsity
by top-k of S.

The margin. As in the authors' code, scores start at 0 and a weight is pruned once
sigmoid(S) < 0.1, i.e. S < -2.2. Adam moves a score whose gradient is pure noise by a random walk
of about ``score_lr * sqrt(steps)``, while one that the penalty dominates descends at
``score_lr`` per step; and since Adam divides each score's gradient by its own noise, the penalty
dominates first the scores of weights whose task gradient is small and steady, the ones the task
needs least. The margin must be wide against the random walk: measured on MiniLM-L6 / SST-2 at
50%, a margin of 0.1 (then the default) let the noise carry salient weights across within a few
dozen steps and the model collapsed to one class (50.9); with 2.2 and ``score_lr`` 0.05 (a walk
of ~0.9 over the 300-step window) it reached 84.2 (with the plain controller below), above the
random-mask control (78.6).

The lambda. How strong lambda must be depends on the run (the authors tune it per task, tens
to hundreds). With ``strength: feedback`` (the default) lambda is set by feedback
(``bermo_prune.pruning.feedback``) so that the threshold sparsity follows the recipe's schedule:
the penalty, not the freeze, does the pruning. A score needs ``margin / score_lr`` steps (44
here) to cross once the penalty drives it, a dead time in which a controller that watches the
threshold sparsity sees nothing and keeps raising lambda: measured at 50%, lambda hit its cap,
then a whole cohort crossed and the sparsity ran 9 points past the schedule, for good (a crossed
score has no force pulling it back once lambda falls). So the controller watches a prediction
instead: every ``VELOCITY_STEPS`` steps, each score that the penalty drives (it fell by at least
``DRIVEN_SHARE`` of Adam's full speed over the last ``VELOCITY_STEPS`` steps) is extrapolated
``lookahead`` steps ahead at that speed, and the share of predicted crossings (with those already
crossed) is compared with the schedule ``lookahead`` steps ahead. Two more rules, each from a
measured failure. Lambda changes only once Adam's first steps are past (they move every score at
full speed, whatever its gradient). And once the threshold sparsity itself runs ahead of the
schedule, the penalty pauses (lambda is held at 0 in the loss, and its controller state falls with
the lead): the prediction misses scores that fall slowly, and with lambda still high at the end of
the window the sparsity ran 5-9 points past the target, to be undone by the freeze. An earlier
controller that counted only scores past half of the margin saw nothing for ~30 steps after the
penalty started, raised lambda 200-fold meanwhile, and then let a 30% cohort cross within 20 steps
(in-window gaps up to 15.5 points in ``benchmarks/results/pruner_health`` before this change).
``strength: schedule`` is the paper's plain form, lambda ramped by the recipe's ``penalty``
schedule; the sparsity is then whatever it gives.

Under feedback the penalty and the scores start ``lookahead`` steps before the window, so that the
first crossings land as the window opens instead of a dead time into it. Before that the masks
are all ones and the scores stay where they start, so that the task gradient alone does not carry
them across the threshold while the schedule asks for no sparsity. The sparsity still trails the
steep opening of the cubic schedule (up to 16.6 points on MiniLM-L6 / SST-2): a larger initial
lambda, and a penalty starting 20 steps earlier still (so that the first prediction, made once
Adam's first steps are past, is of the window's opening), were tried and did not close that gap;
masks set to the top-k of the same scores at the schedule's value follow it by construction, but
took weights whose scores were still on their way down (some pushed by the task gradient, not the
penalty) and collapsed BERT at 80% and 90%; scores started apart (lower for smaller |W|) filled the
opening at 50% but trailed further in at 80-90% (benchmarks/results/soft_movement_probe). The
margin is what keeps harmful weights out; the lag at the opening is its price.

When the scores start. Measured on MiniLM-L6 / SST-2: with the window at 10-70% of the study's
500 steps, the scores learned from step 6, inside the learning-rate warm-up and with the task loss
at chance (the classifier head still untrained); a cohort of ~25% of the weights crossed by step
80, and 3 of 6 runs at 80-90% ended at 60 or below (two collapsed to 50.9), under the random-mask
control. With the window at 25-70% (scores learning from step 81, once the dense loss has fallen to
~0.4) no run of 18 collapsed. The shipped recipe opens the window there, and ``plan`` warns about
a window whose scores start inside the warm-up.
"""

import math
from typing import Literal

import torch
from pydantic import Field

from bermo_prune.errors import BermoPruneError
from bermo_prune.pruning.base import Pruner, PrunerOptions
from bermo_prune.pruning.feedback import FeedbackStrength
from bermo_prune.pruning.registry import register_pruner
from .movement import LearnedScoreMask

# How often the crossing prediction is refreshed, and over how many steps each score's speed is
# measured: long enough to average Adam's momentum, short against the 44-step dead time.
VELOCITY_STEPS = 10
# A score counts as driven by the penalty once it falls at this share of Adam's full speed (score_lr
# per step); scores the task gradient holds wander at a few tenths of it.
DRIVEN_SHARE = 0.5


def logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


class SoftMovementOptions(PrunerOptions):
    score_lr: float = Field(5e-2, gt=0, description="learning rate of the scores")
    init_score: float = Field(0.0, description="initial score (sigmoid 0.5: every weight kept at start)")
    threshold: float = Field(0.1, gt=0, lt=1, description="keep a weight while sigmoid(S) > threshold")
    strength: Literal["feedback", "schedule"] = Field(
        "feedback", description="feedback: lambda follows the sparsity schedule; schedule: the recipe's penalty ramp")
    initial_lambda: float = Field(100.0, gt=0, description="feedback: lambda when the penalty starts "
                                  "(`lookahead` steps before the window opens)")
    max_lambda: float = Field(1e4, gt=0, description="feedback: upper bound of lambda")
    gain: float = Field(0.25, gt=0, description="feedback: log(lambda) change per step and unit of sparsity gap")
    lookahead: int | None = Field(None, ge=0, description="feedback: steps ahead the crossings are predicted "
                                  "(default: the margin over score_lr, the steps a driven score takes to cross; "
                                  "0 watches the threshold sparsity itself)")


class ThresholdMask(LearnedScoreMask):
    """Learned scores whose mask, until it is fixed, is sigmoid(S) > threshold. ``scores_then``
    holds the scores of ``VELOCITY_STEPS`` steps ago (a buffer, so that --resume restores it)."""

    def __init__(self, shape, init_score, threshold, device=None):
        super().__init__(shape, init_score, device=device)
        self.logit_threshold = logit(threshold)
        self.register_buffer("scores_then", torch.full(shape, float(init_score), device=device))
        self.learning = True  # False: the scores get no gradient (outside the window)

    def hard_mask(self):
        return self.scores > self.logit_threshold  # sigmoid(S) > threshold, without the sigmoid

    def forward(self, weight):
        if self.learning or self.fixed:
            return super().forward(weight)
        return weight * self.hard_mask().to(weight.dtype)

    @torch.no_grad()
    def predicted_crossings(self, lookahead: int, driven_fall: float) -> int:
        """How many scores are below the threshold within ``lookahead`` steps if each score that the
        penalty drives goes on falling as fast as it fell over the last ``VELOCITY_STEPS`` steps. A
        score counts as driven once it fell by at least ``driven_fall`` in that time (about half of
        Adam's full speed): scores whose task gradient outweighs the penalty only jitter, and
        counting their small falls predicted crossings that never came."""
        fall = (self.scores - self.scores_then).clamp(max=0.0)
        fall = torch.where(fall <= -driven_fall, fall, torch.zeros_like(fall))
        ahead = self.scores + fall * (lookahead / VELOCITY_STEPS)
        return int((ahead <= self.logit_threshold).sum())


@register_pruner
class SoftMovementPruner(Pruner):
    name = "soft_movement"
    Options = SoftMovementOptions
    trained_sparsity = True

    def __init__(self, recipe):
        super().__init__(recipe)
        o = self.options
        if o.strength == "feedback" and recipe.penalty is not None:
            raise BermoPruneError("soft_movement: a recipe penalty ramp is used with options.strength 'schedule' only "
                                  "(with 'feedback', lambda follows the sparsity schedule): remove penalty or set strength")
        if o.strength == "schedule" and recipe.penalty is None:
            raise BermoPruneError("soft_movement with options.strength 'schedule' needs a recipe penalty (its lambda ramp)")
        if o.initial_lambda > o.max_lambda:
            raise BermoPruneError(f"soft_movement: initial_lambda {o.initial_lambda} is above max_lambda {o.max_lambda}")
        margin = o.init_score - logit(o.threshold)
        if margin <= 0:
            raise BermoPruneError(f"soft_movement: init_score {o.init_score} already prunes at threshold {o.threshold} "
                                  "(sigmoid(init_score) must exceed it)")
        self.lookahead = o.lookahead if o.lookahead is not None else math.ceil(margin / o.score_lr)
        self.strength = FeedbackStrength(o.initial_lambda, o.gain, min(o.initial_lambda, 1e-3), o.max_lambda)
        self.predicted_sparsity: float | None = None
        self.paused = False  # feedback: the sparsity ran ahead of the schedule, the penalty waits

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
        return self.strength.value if self.active(self.step) and not self.paused else 0.0

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
        if self.options.strength == "feedback" and not self.frozen and self.active(step):
            self._feedback(step)

    def first_active_step(self) -> int:
        """Under feedback the scores learn and the penalty acts from ``lookahead`` steps before the
        window, so that the first crossings land as it opens."""
        if self.options.strength != "feedback":
            return self.schedule.start_step
        return max(0, self.schedule.start_step - self.lookahead)

    def active(self, step: int) -> bool:
        """Whether the scores learn and the penalty acts."""
        return self.first_active_step() <= step < self.schedule.end_step

    def _feedback(self, step):
        if self.lookahead == 0:
            self.strength.update(self.schedule(step), self.current_sparsity())
            return
        first = self.first_active_step()
        if (step - first) % VELOCITY_STEPS:
            return
        params = list(self.parametrizations().values())
        # Adam's first steps move every score by about score_lr whatever its gradient (its moments
        # are estimated from a handful of gradients): the first speeds are measured after them.
        if step >= first + 2 * VELOCITY_STEPS:
            driven_fall = DRIVEN_SHARE * self.options.score_lr * VELOCITY_STEPS
            crossings = sum(p.predicted_crossings(self.lookahead, driven_fall) for p in params)
            self.predicted_sparsity = crossings / sum(p.scores.numel() for p in params)
            ahead = self.schedule(min(step + self.lookahead, self.schedule.end_step))
            gap = ahead - self.predicted_sparsity
            # Crossings are for good (nothing pulls a crossed score back up) and the prediction
            # misses scores that fall slowly: once the sparsity itself is ahead of the schedule the
            # penalty pauses (the scores in flight stop within Adam's momentum, ~10 steps) and
            # lambda falls with that lead, so that it resumes weaker.
            lead = self.current_sparsity() - self.schedule(step)
            self.paused = lead > 0
            if self.paused:
                gap = min(gap, -lead)
            # One update stands for VELOCITY_STEPS steps: the gain is per step.
            self.strength.move(gap, steps=VELOCITY_STEPS)
        with torch.no_grad():
            for p in params:
                p.scores_then.copy_(p.scores)

    def _learn_in_window(self):
        for p in self.parametrizations().values():
            p.learning = self.active(self.step)

    def score_steps(self):
        return 0  # the scores mask through the threshold from the first step they learn

    def plan(self):
        plan = super().plan()
        warmup = self.recipe.training.warmup_ratio * self.total_steps
        if self.first_active_step() < warmup:
            plan["warnings"].append(
                f"soft_movement: its scores start learning at step {self.first_active_step()}, inside the learning-rate "
                f"warm-up (to step {math.ceil(warmup)}), while the task loss is still near chance; on MiniLM-L6 / SST-2 "
                "3 of 6 such runs at 80-90% ended at 60% accuracy or below: start the window later (see the soft_movement "
                "pruner's documentation)")
        return plan

    def state_summary(self):
        if self.frozen:
            return {}
        summary = {"lambda": self.current_lambda()}
        if self.predicted_sparsity is not None:
            summary["predicted_sparsity"] = self.predicted_sparsity
        return summary

    def state_dict(self):
        return {**super().state_dict(), "lambda.log_value": self.strength.log_value.clone(),
                "lambda.paused": torch.tensor(self.paused)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self._learn_in_window()
        if "lambda.log_value" in state:  # absent in checkpoints of older versions
            self.strength.load_state_dict({"log_value": state["lambda.log_value"]})
        self.paused = bool(state.get("lambda.paused", False))

    def param_groups(self):
        scores = [p.scores for p in self.parametrizations().values()]
        return [{"params": scores, "lr": self.options.score_lr, "weight_decay": 0.0}]

    def current_sparsity(self):
        if self.frozen:
            return super().current_sparsity()
        params = self.parametrizations().values()
        kept = sum(int(p.hard_mask().sum()) for p in params)
        return 1 - kept / sum(p.scores.numel() for p in params)
