"""bermo-prune inside a user's own training script.

    from transformers import Trainer
    from bermo_prune import PruningCallback, load_recipe

    pruning = PruningCallback(load_recipe("sst2-movement"))
    trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[pruning])
    trainer.train()
    model = pruning.finalize()          # a plain model holding real zeros

The callback needs nothing else from the script: it attaches the recipe's pruner to the model
when the Trainer is built, adds the pruner's own parameters (learned scores, gates) to the
Trainer's optimizer when training starts, adds the gradient of the pruner's loss terms (soft
movement's penalty, L0's Lagrangian) before every optimizer step, moves the masks along the
schedule after it, and logs the sparsity and each loss term. What differs from
``bermo-prune prune`` (whose Trainer has all of this built in): the pruner's parameter groups
keep their recipe learning rate for the whole run (the script's scheduler was built before they
were added), and its loss terms reach the gradients after the Trainer clipped them.
"""

from __future__ import annotations

import torch
from transformers import BertForSequenceClassification, TrainerCallback

from bermo_prune.errors import BermoPruneError
from bermo_prune.models import BermoConfig, BermoForSequenceClassification
from bermo_prune.pruning.registry import get_pruner_class
from bermo_prune.recipes import Recipe
from bermo_prune.recipes import load_recipe as load_recipe_file
from bermo_prune.recipes import resolve_recipe


def load_recipe(name_or_path: str, overrides: dict | None = None) -> Recipe:
    """A recipe by bundled name (``sst2-movement``) or path, validated; ``overrides`` maps dotted
    keys to values (``{"target_sparsity": 0.8}``)."""
    return load_recipe_file(resolve_recipe(name_or_path), overrides)


PLACEHOLDER_STEPS = 10**9


class PruningCallback(TrainerCallback):
    def __init__(self, recipe: Recipe, model: torch.nn.Module | None = None):
        self.recipe = recipe
        self.pruner = get_pruner_class(recipe.pruner.name)(recipe)
        self.model = None
        self.last_terms: dict[str, float] = {}
        self.final_sparsity: float | None = None  # set by finalize
        if model is not None:
            self._attach(model)

    # --- the Trainer's events ---------------------------------------------------------------
    def on_init_end(self, args, state, control, model=None, **kwargs):
        if self.model is None and model is not None:
            self._attach(model)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        if self.model is None:
            self._attach(model)
        self.pruner.set_total_steps(state.max_steps)
        self.pruner.to(args.device)
        if optimizer is not None and not any(group.get("bermo_prune") for group in optimizer.param_groups):
            # The optimizer was built after attach, so the scores and gates sit in the model's own
            # groups (with its learning rate and weight decay): move them into the pruner's.
            own = {id(p) for group in self.pruner.param_groups() for p in group["params"]}
            for existing in optimizer.param_groups:
                existing["params"] = [p for p in existing["params"] if id(p) not in own]
            for group in self.pruner.param_groups():
                optimizer.add_param_group({**group, "initial_lr": group["lr"], "bermo_prune": True})
                _follow_the_schedule(lr_scheduler, group["lr"])

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        terms = self.pruner.loss_terms()
        if terms:
            total = sum(terms.values())
            if total.requires_grad:
                total.backward()
            self.last_terms = {name: float(value.detach()) for name, value in terms.items()}
        else:
            self.last_terms = {}
        self.pruner.before_optimizer_step()

    def on_step_end(self, args, state, control, **kwargs):
        self.pruner.zero_external_grads()
        self.pruner.on_step_end(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:
            return
        extra = {"sparsity": round(self.pruner.current_sparsity(), 6), **self.last_terms, **self.pruner.state_summary()}
        logs.update(extra)
        if state.log_history:
            state.log_history[-1].update(extra)

    # --- the result -------------------------------------------------------------------------
    def finalize(self) -> torch.nn.Module:
        """Fix the masks at exactly the target (if the run ended before the window closed), bake
        them into real zeros and remove every parametrisation: the plain model, pruned."""
        if self.model is None:
            raise BermoPruneError("PruningCallback.finalize: the callback never saw a model (pass it to a Trainer first)")
        if not self.pruner.frozen:
            self.pruner.freeze()
        self.final_sparsity = self.pruner.current_sparsity()
        self.pruner.finalize()
        return self.model

    def _attach(self, model) -> None:
        self.model = model
        # The true step count comes at on_train_begin; until then a run "of" many steps keeps every
        # schedule before its window (a short placeholder would round a late one-shot step to 0).
        self.pruner.attach(model, total_steps=PLACEHOLDER_STEPS)


def _follow_the_schedule(scheduler, base_lr: float) -> None:
    """Give a parameter group added after the scheduler was built the schedule of the first group
    (warm-up and decay, as ``bermo-prune prune`` does): torch's schedulers zip their per-group
    lists with the optimizer's groups and refuse a group they do not know."""
    if scheduler is None:
        return
    scheduler = getattr(scheduler, "scheduler", scheduler)  # accelerate wraps it
    if hasattr(scheduler, "lr_lambdas"):
        scheduler.lr_lambdas.append(scheduler.lr_lambdas[0])
    if not hasattr(scheduler, "base_lrs"):
        raise BermoPruneError(f"PruningCallback cannot add the pruner's parameters to a {type(scheduler).__name__}")
    scheduler.base_lrs.append(base_lr)
    if hasattr(scheduler, "_last_lr"):
        scheduler._last_lr.append(base_lr * (scheduler._last_lr[0] / scheduler.base_lrs[0] if scheduler.base_lrs[0] else 1.0))


def to_bermo(model: BertForSequenceClassification, **bermo_options) -> BermoForSequenceClassification:
    """BERMo on the same weights as a BERT sequence classifier (its encoder, pooler and head), with
    a fresh, uniform scalar mix; ``bermo_options`` are BermoConfig's (e.g. bermo_pooling)."""
    if not isinstance(model, BertForSequenceClassification):
        raise BermoPruneError(f"to_bermo needs a BertForSequenceClassification, not a {type(model).__name__}")
    config = BermoConfig.from_bert_config(model.config, **bermo_options)
    bermo = BermoForSequenceClassification(config)
    missing, unexpected = bermo.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not key.startswith("scalar_mix.") for key in missing):
        raise BermoPruneError(f"to_bermo: the weights do not fit BERMo (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return bermo.to(next(model.parameters()).device)
