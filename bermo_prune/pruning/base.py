"""The pruner life cycle, shared by every pruner.

    attach(model, total_steps) -> [per step: penalty(), before_optimizer_step(), on_step_end()]
    -> finalize()

A pruner owns one parametrisation per targeted Linear weight. Score-based pruners only say how
to score weights (``scores``); the base class turns scores into exact top-k masks on the
recipe's schedule, fixes them when the pruning window closes, and bakes them into real zeros.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from bermo_prune.errors import BermoPruneError
from bermo_prune.pruning import masks as M


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Pruner:
    name: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, recipe):
        self.recipe = recipe
        self.options = recipe.pruner.options
        self.modules: dict[str, nn.Linear] = {}
        self.schedule = None
        self.penalty_schedule = None
        self.frozen = False
        self.frozen_at: int | None = None
        self.step = 0
        self.total_steps = 0

    # --- life cycle -------------------------------------------------------------------------
    def attach(self, model: nn.Module, total_steps: int) -> None:
        targets = self.recipe.targets
        self.modules = M.select_modules(model, targets.include, targets.exclude)
        if not self.modules:
            raise BermoPruneError(f"recipe targets match no Linear module of the model (include={targets.include})")
        self.total_steps = total_steps
        self.schedule = self.recipe.sparsity_schedule(total_steps)
        self.penalty_schedule = self.recipe.penalty_schedule(total_steps)
        for name, module in self.modules.items():
            M.attach(module, self.make_parametrization(name, module))
        self.on_attach()
        if self.schedule(0) > 0:  # constant and one-shot-at-step-0 schedules prune before training
            self.update(self.schedule(0))

    def on_step_end(self, step: int) -> None:
        """Called after each optimizer step with the number of steps done."""
        self.step = step
        if self.frozen:
            return
        if step >= self.schedule.end_step:
            self.freeze()
        elif step >= self.schedule.start_step and (step - self.schedule.start_step) % self.recipe.schedule.update_every == 0:
            self.update(self.schedule(step))

    def freeze(self) -> None:
        """Fix masks at exactly the target sparsity; later steps only fine-tune the kept weights."""
        self.set_masks(M.topk_masks(self.scores(), self.recipe.target_sparsity, self.recipe.scope))
        self.frozen = True
        self.frozen_at = self.step

    def finalize(self) -> None:
        """Bake the masks into real zeros and remove every parametrisation: a plain model again."""
        if not self.frozen:
            self.freeze()
        for name, module in self.modules.items():
            M.bake(module, M.parametrization_of(module).mask)

    # --- hooks for subclasses ----------------------------------------------------------------
    def make_parametrization(self, name: str, module: nn.Linear) -> nn.Module:
        return M.MaskedWeight(module.weight.shape, device=module.weight.device)

    def on_attach(self) -> None:
        pass

    def scores(self) -> dict[str, torch.Tensor]:
        """Importance of every targeted weight (higher = keep)."""
        raise NotImplementedError

    def update(self, sparsity: float) -> None:
        self.set_masks(M.topk_masks(self.scores(), sparsity, self.recipe.scope, exact=False))

    def penalty(self) -> torch.Tensor | None:
        """Extra loss term (None for pruners without one)."""
        return None

    def param_groups(self) -> list[dict]:
        """Extra optimizer parameter groups (learned scores, gates, multipliers)."""
        return []

    def before_optimizer_step(self) -> None:
        pass

    def state_summary(self) -> dict:
        """Numbers worth logging while training (beyond sparsity)."""
        return {}

    # --- helpers ------------------------------------------------------------------------------
    def parametrizations(self) -> dict[str, nn.Module]:
        return {name: M.parametrization_of(m) for name, m in self.modules.items()}

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: M.original_weight(m).detach() for name, m in self.modules.items()}

    def set_masks(self, new_masks: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, p in self.parametrizations().items():
                p.mask.copy_(new_masks[name])

    def current_sparsity(self) -> float:
        """Fraction of targeted weights currently masked out."""
        zeros = total = 0
        for p in self.parametrizations().values():
            zeros += int((p.mask == 0).sum())
            total += p.mask.numel()
        return zeros / total

    def current_penalty_weight(self) -> float:
        return self.penalty_schedule(self.step) if self.penalty_schedule is not None else 0.0
