"""How far a run's own sparsity strayed from its schedule (bermo_prune.bench.results.schedule_gap):
a pruner that sets its masks every ``update_every`` steps and holds them is on schedule when it
lands on the value asked at each update; one whose sparsity is trained between updates is held
to the curve at every logged step."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bermo_prune.bench.results import schedule_gap
from bermo_prune.recipes import load_recipe, recipe_to_dict

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
TOTAL = 500  # oBERT's bundled recipe: window 50-350, masks every 50 steps


def run(pruner: str, sparsity_at, window: tuple[int, int] | None = None) -> dict:
    recipe = load_recipe(RECIPES / "sst2-obert.yaml")
    schedule = recipe.sparsity_schedule(TOTAL)
    if window:  # the pruner opened its window elsewhere (movement's score_warmup), as its plan says
        schedule = dataclasses.replace(schedule, start_step=window[0], end_step=window[1])
    plan = {"total_steps": TOTAL, "window": list(window or (schedule.start_step, schedule.end_step))}
    return {"pruner": pruner, "recipe": recipe_to_dict(recipe), "steps": TOTAL, "plan": plan,
            "loss_curve": [{"step": t, "loss": 0.3, "sparsity": sparsity_at(schedule, t)} for t in range(10, TOTAL + 1, 10)]}


def staircase(schedule, t, lag=0):
    last_update = t - (t - schedule.start_step) % 50 - lag
    return schedule(last_update)


def test_a_staircase_that_lands_on_each_update_is_on_schedule():
    assert schedule_gap(run("obert", staircase)) == pytest.approx(0.0, abs=1e-12)


def test_the_window_is_the_plan_s():
    result = run("obert", staircase, window=(150, 350))
    assert schedule_gap(result) == pytest.approx(0.0, abs=1e-12)
    del result["plan"]["window"]  # read against the recipe's window (50-350) it would be far off
    assert schedule_gap(result) > 0.3


def test_a_staircase_one_update_late_is_not():
    late = schedule_gap(run("obert", lambda s, t: staircase(s, t, lag=50)))
    assert late > 0.3  # the cubic asks ~38% at the first update, 0 was kept


def test_trained_sparsity_is_held_to_the_curve_and_unknown_pruners_too():
    on_curve = schedule_gap(run("soft_movement", lambda s, t: s(t)))
    assert on_curve == pytest.approx(0.0, abs=1e-12)
    held = schedule_gap(run("soft_movement", staircase))  # holding between updates is trailing for it
    assert held > 0.2
    assert schedule_gap(run("some-plugin-not-installed", staircase)) == held  # the stricter comparison


def test_from_a_fraction_of_the_window_on_only_later_steps_count():
    result = run("soft_movement", lambda s, t: s(t) - (0.1 if t < 120 else 0.0))
    assert schedule_gap(result) == pytest.approx(0.1)
    assert schedule_gap(result, after=0.25) == pytest.approx(0.0, abs=1e-12)


def test_one_shot_runs_have_no_window():
    recipe = recipe_to_dict(load_recipe(RECIPES / "sst2-one-shot-magnitude.yaml"))
    result = {"pruner": "magnitude", "recipe": recipe, "steps": TOTAL,
              "loss_curve": [{"step": 10, "loss": 0.3, "sparsity": 0.9}]}
    assert schedule_gap(result) is None
