"""Gradual schedules for target sparsity and for penalty strengths (lambda).

Steps are optimizer steps. A schedule holds ``initial`` before ``start_step`` (dense
warm-up), moves towards ``final`` inside ``[start_step, end_step)`` (the pruning window)
and holds ``final`` from ``end_step`` on (cool-down, masks fixed). Recipes give the window
as fractions of the training run so one recipe fits any step budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

Shape = Literal["cubic", "linear", "exponential", "cosine", "one_shot", "constant"]
SHAPES: tuple[str, ...] = get_args(Shape)

# Rate of the exponential ramp: most of the change happens early (about 92% of the way
# at half progress), a gentler alternative to cutting everything at once.
EXPONENTIAL_RATE = 5.0


def ramp(shape: str, progress: float) -> float:
    """Fraction of the way from the initial to the final value at ``progress`` in [0, 1].

    Monotone, 0 at progress 0 and 1 at progress 1; ``one_shot`` and ``constant`` are 1
    as soon as progress reaches 0. Progress outside [0, 1] is clamped.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown schedule shape {shape!r}; expected one of {', '.join(SHAPES)}")
    if progress < 0:
        return 0.0
    p = min(progress, 1.0)
    if shape in ("one_shot", "constant"):
        return 1.0
    if shape == "cubic":  # Zhu & Gupta 2017 (AGP): prune fast while redundancy is high
        return 1.0 - (1.0 - p) ** 3
    if shape == "linear":
        return p
    if shape == "cosine":
        return (1.0 - math.cos(math.pi * p)) / 2.0
    return (1.0 - math.exp(-EXPONENTIAL_RATE * p)) / (1.0 - math.exp(-EXPONENTIAL_RATE))


@dataclass(frozen=True)
class Schedule:
    shape: str
    initial: float
    final: float
    start_step: int
    end_step: int

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown schedule shape {self.shape!r}; expected one of {', '.join(SHAPES)}")
        if self.start_step < 0:
            raise ValueError(f"start_step must be >= 0 (got {self.start_step})")
        # A constant value has no window to order; in_window() is then simply never true.
        if self.shape != "constant" and self.end_step < self.start_step:
            raise ValueError(f"end_step ({self.end_step}) is before start_step ({self.start_step})")

    def __call__(self, step: int) -> float:
        if self.shape == "constant":
            return self.final
        if step < self.start_step:
            return self.initial
        if step >= self.end_step:
            return self.final
        progress = (step - self.start_step) / (self.end_step - self.start_step)
        return self.initial + (self.final - self.initial) * ramp(self.shape, progress)

    def in_window(self, step: int) -> bool:
        return self.start_step <= step < self.end_step

    @classmethod
    def from_fractions(
        cls, shape: str, initial: float, final: float, start: float, end: float, total_steps: int
    ) -> Schedule:
        """Build a schedule whose window is given as fractions of ``total_steps``."""
        if total_steps < 0:
            raise ValueError(f"total_steps must be >= 0 (got {total_steps})")
        return cls(shape, initial, final, round(start * total_steps), round(end * total_steps))
