"""A penalty strength set by feedback, so that the sparsity a penalty induces follows a schedule.

Penalty-driven pruners (soft movement's lambda * mean(sigmoid(S))) do not choose their sparsity:
the regulariser's strength does, and the strength a target needs depends on the model, the task,
the learning rates and the target itself (the authors of soft movement tune lambda per run,
from tens to hundreds). A fixed ramp is therefore either too weak (nothing is pruned inside the
window, and the freeze does the pruning) or too strong. Instead, after every optimizer step

    log lambda <- log lambda + gain * (target(step) - sparsity)

clamped to [min_value, max_value]: lambda grows geometrically while the sparsity trails the
schedule and shrinks while it runs ahead. Working in log space makes the gain independent of the
scale lambda ends up at. The state (log lambda) is a tensor, so checkpoints carry it.
"""

from __future__ import annotations

import math

import torch


class FeedbackStrength:
    def __init__(self, initial: float, gain: float, min_value: float, max_value: float):
        if not 0 < min_value <= initial <= max_value:
            raise ValueError("need 0 < min_value <= initial <= max_value")
        self.gain = gain
        self.bounds = (math.log(min_value), math.log(max_value))
        self.log_value = torch.tensor(math.log(initial), dtype=torch.float64)

    @property
    def value(self) -> float:
        return math.exp(float(self.log_value))

    def update(self, target: float, achieved: float, steps: int = 1) -> None:
        """One feedback step; ``steps`` > 1 when one measurement stands for that many steps."""
        self.move(target - achieved, steps)

    def move(self, gap: float, steps: int = 1) -> None:
        """One feedback step on a gap the caller has worked out (positive: lambda grows)."""
        low, high = self.bounds
        self.log_value.fill_(min(high, max(low, float(self.log_value) + self.gain * steps * gap)))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"log_value": self.log_value.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.log_value.copy_(state["log_value"])
