"""What a results directory holds, read once for the report, the comparison and the plots: the
run files and the small facts every table needs (finished statuses, a run's main metric)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from bermo_prune.errors import BermoPruneError

DENSE = "dense"
# Statuses of runs that finished with a dev metric: off_schedule runs (the freeze, not the pruner,
# set their final sparsity) count like ok ones, and are counted on their own too.
WITH_METRIC = ("ok", "off_schedule", "diverged")


def load_results(results_dir: str | Path) -> list[dict]:
    runs_dir = Path(results_dir) / "runs"
    if not runs_dir.is_dir():
        raise BermoPruneError(f"{results_dir}: no runs/ folder with results (run `bermo-prune bench` first)")
    results = []
    for path in sorted(runs_dir.glob("*.json")):
        try:
            results.append(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise BermoPruneError(f"{path}: not valid JSON ({exc})") from None
    if not results:
        raise BermoPruneError(f"{runs_dir}: no result files")
    return results


def cell_key(result: dict) -> tuple[str, str, float]:
    """The report row a run belongs to: arch, pruner (or the recipe's label where two recipes share
    a pruner; 'dense' for dense runs) and target sparsity."""
    return (result["arch"], result.get("label") or result.get("pruner") or DENSE,
            round(float(result.get("target_sparsity") or 0.0), 6))


def main_value(result: dict) -> float | None:
    value = (result.get("metrics") or {}).get(result.get("main_metric"))
    return value if value is not None and math.isfinite(value) else None


def fmt(value, pct: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" if pct else f"{value:.4f}"


def planned_schedule(result: dict):
    """The sparsity schedule the run's pruner followed, and the steps between its mask updates:
    its recipe's over the planned steps (a run stopped early by a non-finite loss logs fewer
    steps than it planned), in the window of the run's plan where it has one (movement's
    ``score_warmup`` opens the window later than the recipe says)."""
    from bermo_prune.recipes import Recipe

    recipe = Recipe.model_validate(result["recipe"])
    plan = result.get("plan") or {}
    schedule = recipe.sparsity_schedule(plan.get("total_steps") or result["steps"])
    if plan.get("window") and schedule.shape not in ("one_shot", "constant"):
        schedule = dataclasses.replace(schedule, start_step=plan["window"][0], end_step=plan["window"][1])
    return schedule, recipe.schedule.update_every


def schedule_gap(result: dict, after: float = 0.0) -> float | None:
    """Largest gap between the run's own sparsity and what its schedule asked, over the logged
    steps inside the pruning window from ``after`` (a fraction of the window) on; None for a run
    with no window or no log of it (one-shot masks). A pruner that sets its masks every
    ``update_every`` steps and holds them is asked the schedule's value at its last update (a
    staircase under the curve); one whose sparsity is trained between updates (l0: the gates'
    expected sparsity, soft movement: the threshold sparsity) the schedule's value at that step."""
    if not result.get("recipe") or not result.get("loss_curve"):
        return None
    s, every = planned_schedule(result)
    if _trained_sparsity(result.get("pruner")):
        every = 1
    first = s.start_step + after * (s.end_step - s.start_step)
    gaps = [abs(c["sparsity"] - s(c["step"] - (c["step"] - s.start_step) % every)) for c in result["loss_curve"]
            if c.get("sparsity") is not None and s.in_window(c["step"]) and c["step"] >= first]
    return max(gaps) if gaps else None


def _trained_sparsity(pruner: str | None) -> bool:
    from bermo_prune.pruning.registry import get_pruner_class

    try:
        return get_pruner_class(pruner).trained_sparsity
    except BermoPruneError:  # a pruner not installed here: compare with the curve at every step, the stricter
        return True


def freeze_jump(result: dict) -> float | None:
    """The change of sparsity when the masks were fixed (final - just before), signed: how much of
    the pruning the freeze, not the pruner, did."""
    jump = result.get("freeze_jump")
    if jump is None and result.get("sparsity_before_freeze") is not None:
        jump = result["sparsity"]["targeted"] - result["sparsity_before_freeze"]
    return jump


def largest_in_size(values) -> float | None:
    """The value of largest size, sign kept, over those known (None where none is)."""
    known = [v for v in values if v is not None]
    return max(known, key=abs) if known else None
