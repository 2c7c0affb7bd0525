"""The pruner life cycle, shared by every pruner.

    attach(model, total_steps) -> [per step: loss_terms(), before_optimizer_step(), on_step_end()]
    -> finalize()

``state_dict``/``load_state_dict`` carry what a resumed run needs beyond the model's own state
dict (which already holds masks, scores and gates, as buffers and parameters of the
parametrisations): the step, whether masks are fixed, and parameters the pruner keeps outside
the model (Lagrange multipliers, group gates). Under torch.distributed, ``sync`` makes state that
each process accumulates on its own (movement scores) identical everywhere before it is used.

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


class PrunerOptions(BaseModel):
    """Base of a pruner's ``Options``: a recipe's misspelt key, nan or inf is an error, not a
    silently ignored or poisoned setting."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class NoOptions(PrunerOptions):
    pass


class Pruner:
    name: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = NoOptions
    # Whether the sparsity moves between mask updates because it is trained (gates, thresholded
    # scores) instead of being set at each update and held: schedule tracking then compares it
    # with the schedule at every step, not with the value last asked (a staircase under the curve).
    trained_sparsity: ClassVar[bool] = False

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
        self.model: nn.Module | None = None
        # What the freeze did: sparsity just before it (what the pruner had reached by itself,
        # e.g. the expected sparsity of L0 gates) and the scheduled target it was fixed to.
        self.sparsity_before_freeze: float | None = None

    # --- life cycle -------------------------------------------------------------------------
    def attach(self, model: nn.Module, total_steps: int) -> None:
        targets = self.recipe.targets
        self.modules = M.select_modules(model, targets.include, targets.exclude)
        if not self.modules:
            raise BermoPruneError(f"recipe targets match no Linear module of the model (include={targets.include})")
        self.model = model
        self.set_total_steps(total_steps)
        for name, module in self.modules.items():
            M.attach(module, self.make_parametrization(name, module))
        self.on_attach()
        if self.schedule(0) > 0:  # constant and one-shot-at-step-0 schedules prune before training
            self.update(self.schedule(0))

    def set_total_steps(self, total_steps: int) -> None:
        """(Re)build the schedules for a run of ``total_steps`` optimizer steps."""
        self.total_steps = total_steps
        self.schedule = self.recipe.sparsity_schedule(total_steps)
        self.penalty_schedule = self.recipe.penalty_schedule(total_steps)

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
        self.sync()
        self.sparsity_before_freeze = self.current_sparsity()
        self.fix_masks()
        self.frozen = True
        self.frozen_at = self.step
        self.on_freeze()

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

    def fix_masks(self) -> None:
        """Set the final masks, at exactly the target sparsity."""
        self.set_masks(M.topk_masks(self.scores(), self.recipe.target_sparsity, self.recipe.scope))

    def on_freeze(self) -> None:
        """Stop whatever the pruner trains (gates, scores) once the masks are fixed; also run when
        a run resumes after the freeze."""

    def sync(self) -> None:
        """Make process-local state identical across torch.distributed processes (no-op alone)."""

    def scores(self) -> dict[str, torch.Tensor]:
        """Importance of every targeted weight (higher = keep)."""
        raise NotImplementedError

    def update(self, sparsity: float) -> None:
        self.sync()
        self.set_masks(M.topk_masks(self.scores(), sparsity, self.recipe.scope, exact=False))

    def loss_terms(self) -> dict[str, torch.Tensor]:
        """Extra loss terms by name (``penalty``, ``lagrangian``, ...), each added to the task loss
        and logged on its own; empty for pruners without any."""
        return {}

    def penalty(self) -> torch.Tensor | None:
        """The sum of :meth:`loss_terms` (None when there is none)."""
        terms = list(self.loss_terms().values())
        return sum(terms[1:], terms[0]) if terms else None

    # --- what a run will do, for guard rails ---------------------------------------------------
    #: Pruners whose importance is learned during training (scores, gates) need this many
    #: optimizer steps of it before the first mask; fewer earns a warning (``plan``).
    min_score_steps: ClassVar[int] = 0

    def score_steps(self) -> int | None:
        """Optimizer steps the pruner's scores or gates train before the first mask is applied
        (None for pruners whose importance is not learned: magnitude, random)."""
        return None

    def plan(self) -> dict:
        """The run's pruning plan in optimizer steps, and warnings about it (after attach or
        set_total_steps)."""
        s = self.schedule
        plan = {"total_steps": self.total_steps, "window": [s.start_step, s.end_step],
                "window_steps": max(0, s.end_step - s.start_step), "score_steps": self.score_steps(), "warnings": []}
        if plan["score_steps"] is not None and plan["score_steps"] < self.min_score_steps:
            plan["warnings"].append(
                f"{self.name}: its scores train for only {plan['score_steps']} optimizer steps before the first mask "
                f"(at least {self.min_score_steps} advised); masks from fewer steps of scores can be worse than random ones "
                f"(see the {self.name} pruner's documentation)")
        return plan

    def param_groups(self) -> list[dict]:
        """Extra optimizer parameter groups (learned scores, gates, multipliers)."""
        return []

    def before_optimizer_step(self) -> None:
        pass

    def state_summary(self) -> dict:
        """Numbers worth logging while training (beyond sparsity)."""
        return {}

    def to(self, *args, **kwargs) -> None:
        """``Tensor.to`` for the parameters kept outside the model (the Trainer moves only the
        model, after the pruner attached). The tensors stay the same objects, so hooks stay."""
        for param in self.external_parameters():
            param.data = param.data.to(*args, **kwargs)

    # --- resuming -----------------------------------------------------------------------------
    def external_parameters(self) -> list[torch.Tensor]:
        """Trained parameters of the pruner that the model does not hold (its state dict misses them)."""
        own = {id(p) for p in self.model.parameters()} if self.model is not None else set()
        return [p for group in self.param_groups() for p in group["params"] if id(p) not in own]

    def zero_external_grads(self) -> None:
        """Drop the gradients of :meth:`external_parameters` after an optimizer step: the Trainer
        zeroes the model's gradients only, and these would otherwise add up over steps."""
        for param in self.external_parameters():
            param.grad = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {
            "step": torch.tensor(self.step),
            "frozen": torch.tensor(int(self.frozen)),
            "frozen_at": torch.tensor(-1 if self.frozen_at is None else self.frozen_at),
            "sparsity_before_freeze": torch.tensor(-1.0 if self.sparsity_before_freeze is None else self.sparsity_before_freeze),
        }
        for i, param in enumerate(self.external_parameters()):
            state[f"external.{i}"] = param.detach().clone()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        externals = self.external_parameters()
        saved = sorted((k for k in state if k.startswith("external.")), key=lambda k: int(k.split(".")[1]))
        if len(saved) != len(externals) or any(state[k].shape != p.shape for k, p in zip(saved, externals)):
            raise BermoPruneError(f"saved {self.name} pruner state does not fit this pruner (different recipe or model?)")
        with torch.no_grad():
            for key, param in zip(saved, externals):
                param.copy_(state[key])
        self.step = int(state["step"])
        frozen_at = int(state["frozen_at"])
        self.frozen_at = None if frozen_at < 0 else frozen_at
        before = float(state.get("sparsity_before_freeze", torch.tensor(-1.0)))  # absent in older checkpoints
        self.sparsity_before_freeze = None if before < 0 else before
        if int(state["frozen"]) and not self.frozen:
            self.frozen = True
            self.on_freeze()

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
