"""What a run reports about itself beyond its metric: each piece of the loss on its own, the
pruning plan in optimizer steps (``recipe check`` and the start of training), and the
``off_schedule`` status of a run whose freeze did the pruning."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import yaml

from bermo_prune import runs
from bermo_prune.bench.compare import compare
from bermo_prune.bench.report import summarize, write_report
from bermo_prune.pruning import registry
from bermo_prune.pruning.registry import available_pruners, register_pruner
from bermo_prune.recipes import DivergenceSpec, load_recipe
from bermo_prune.train import OFF_SCHEDULE_MARGIN, DivergenceGuard, run_status
from bermo_prune.builtin_pruners.magnitude import MagnitudePruner

from test_cli import ok, run


class TermsTestPruner(MagnitudePruner):
    """Magnitude masks plus three loss terms: one that depends on the weights, a constant, and
    one whose name clashes with the Trainer's ``loss``."""

    name = "terms_test"
    min_score_steps = 1000  # its "scores" never train that long: recipe check must warn

    def loss_terms(self):
        first = next(iter(self.modules.values()))
        weight = first.parametrizations.weight.original
        return {"penalty": 0.1 * weight.pow(2).mean(), "lagrangian": torch.tensor(0.25), "loss": torch.tensor(0.125)}

    def score_steps(self):
        return self.schedule.start_step


@pytest.fixture
def terms_pruner(monkeypatch):
    available_pruners()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_pruner(TermsTestPruner)


def write_recipe(path, pruner="terms_test", **training):
    path.write_text(yaml.safe_dump({
        "name": "guard", "pruner": {"name": pruner}, "target_sparsity": 0.5, "scope": "global",
        "schedule": {"shape": "cubic", "start": 0.2, "end": 0.8, "update_every": 1},
        "training": {"epochs": 2, "batch_size": 16, "learning_rate": 1e-3, "max_length": 32, **training},
    }))
    return path


# --- loss terms ------------------------------------------------------------------------------


def test_each_loss_term_is_logged_and_the_terms_add_up_to_the_loss(terms_pruner, tiny_checkpoint, tiny_glue, tmp_path):
    plans = []
    report = runs.prune(str(tiny_checkpoint), load_recipe(write_recipe(tmp_path / "r.yaml")), "sst2", tmp_path / "out",
                        data_dir=str(tiny_glue), progress=False, on_plan=plans.append)
    curve = report["loss_curve"]
    assert len(curve) == report["steps"] == 8  # 64 examples / 16 x 2 epochs, one entry per step
    for point in curve:
        assert {"step", "loss", "task_loss", "penalty", "lagrangian", "pruner_loss", "sparsity"} <= point.keys()
        assert point["lagrangian"] == pytest.approx(0.25) and point["pruner_loss"] == pytest.approx(0.125)
        assert point["penalty"] > 0
        pieces = point["task_loss"] + point["penalty"] + point["lagrangian"] + point["pruner_loss"]
        assert point["loss"] == pytest.approx(pieces, rel=1e-5)
        assert "learning_rate" not in point and "epoch" not in point
    saved = json.loads((tmp_path / "out" / "pruning_report.json").read_text())
    assert saved["loss_curve"] == curve
    # the plan, once the Trainer knew the step count, given to the caller and kept in the report
    assert plans == [saved["plan"]]
    assert saved["plan"]["total_steps"] == 8 and saved["plan"]["window"] == [2, 6] and saved["plan"]["score_steps"] == 2
    assert any("1000" in w for w in saved["plan"]["warnings"])


def test_loss_terms_are_averaged_over_the_logging_interval():
    from bermo_prune.train import LossTermMeter

    meter = LossTermMeter()
    for step, (task, penalty) in enumerate([(1.0, None), (3.0, 0.5)]):  # the penalty starts in the second step
        for _ in range(2):  # two micro-batches per optimizer step, each weighted 1/2 as the Trainer does
            pieces = {"task_loss": torch.tensor(task)} | ({"penalty": torch.tensor(penalty)} if penalty else {})
            meter.add(pieces, step, 0.5)
    assert meter.pop_means(2) == {"task_loss": pytest.approx(2.0), "penalty": pytest.approx(0.25)}
    assert meter.pop_means(2) == {}


def test_loss_plot_uses_the_task_loss_when_the_run_logged_it():
    from bermo_prune.bench.plots import plotted_loss

    new = [{"step": 1, "loss": 2.0, "task_loss": 0.7}, {"step": 2, "loss": 1.9, "task_loss": 0.6}]
    old = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.9}]
    assert plotted_loss(new) == ("task_loss", new)
    assert plotted_loss(old) == ("loss", old)


# --- the plan --------------------------------------------------------------------------------


def test_recipe_check_states_the_plan_in_optimizer_steps(terms_pruner, tmp_path):
    path = write_recipe(tmp_path / "r.yaml", max_train_samples=64)
    text = " ".join(ok(run("recipe", "check", path)).output.split())
    assert text.startswith("ok ")
    assert "plan for 64 examples (training.max_train_samples)" in text
    assert "8 optimizer steps, pruning window steps 2-6 (4 steps); scores/gates train 2 steps before the first mask" in text
    assert "warning: terms_test: its scores train for only 2 optimizer steps" in text

    magnitude = write_recipe(tmp_path / "m.yaml", pruner="magnitude", epochs=1)  # no max_train_samples
    text = " ".join(ok(run("recipe", "check", magnitude)).output.split())
    assert "67,349 examples (assumed: all of SST-2's GLUE train split" in text
    assert "4,210 optimizer steps" in text and "importance not learned" in text and "warning" not in text
    text = " ".join(ok(run("recipe", "check", magnitude, "--train-examples", "100")).output.split())
    assert "100 examples (--train-examples)" in text and "7 optimizer steps" in text
    text = " ".join(ok(run("recipe", "check", magnitude, "--task", "rte")).output.split())
    assert "2,490 examples (assumed: all of RTE's GLUE train split" in text


# --- off_schedule ----------------------------------------------------------------------------


def fake_pruner(before: float | None, target: float = 0.9, frozen_at: int = 100):
    return SimpleNamespace(sparsity_before_freeze=before, frozen_at=frozen_at, schedule=lambda step: target)


def test_a_pruner_that_trails_its_schedule_at_the_freeze_is_off_schedule():
    status, reason = run_status(DivergenceGuard(DivergenceSpec()), fake_pruner(0.62))
    assert status == "off_schedule"
    assert reason == "sparsity 62.0% before the freeze, schedule 90.0%: the freeze did the pruning"


def test_a_structured_target_counts_in_weights_at_what_the_freeze_reached():
    # heads/neurons scheduled to "75%" prune 66.7% of the weights: on target, not off schedule
    guard = DivergenceGuard(DivergenceSpec())
    assert run_status(guard, fake_pruner(0.667, target=0.75), final_sparsity=0.667) == ("ok", None)
    status, reason = run_status(guard, fake_pruner(0.55, target=0.75), final_sparsity=0.667)
    assert status == "off_schedule" and reason.startswith("sparsity 55.0% before the freeze, schedule 66.7%")
    # an unstructured freeze lands on the schedule's target: the schedule is the reference
    assert run_status(guard, fake_pruner(0.62), final_sparsity=0.9)[0] == "off_schedule"


def test_a_pruner_on_its_schedule_is_ok_and_divergence_comes_first():
    guard = DivergenceGuard(DivergenceSpec())
    assert run_status(guard, fake_pruner(0.9 - OFF_SCHEDULE_MARGIN + 1e-3)) == ("ok", None)
    assert run_status(guard, fake_pruner(0.9)) == ("ok", None)
    assert run_status(guard, None) == ("ok", None)  # dense fine-tuning
    guard.reason = "non-finite loss at step 3"
    assert run_status(guard, fake_pruner(0.1)) == ("diverged", "non-finite loss at step 3")


def test_the_report_counts_off_schedule_runs_as_finished(tmp_path):
    def result(arch, seed, accuracy, status):
        return {"arch": arch, "pruner": "l0", "target_sparsity": 0.9, "seed": seed, "status": status,
                "reason": "sparsity 62.0% before the freeze, schedule 90.0%: the freeze did the pruning"
                if status == "off_schedule" else None, "main_metric": "accuracy", "metrics": {"accuracy": accuracy},
                "run_id": f"{arch}-l0-s0.9-seed{seed}"}

    results = [result("bert", 0, 0.70, "off_schedule"), result("bermo", 0, 0.74, "ok"),
               result("bert", 1, 0.50, "diverged"), result("bermo", 1, 0.72, "off_schedule")]
    rows = {r["arch"]: r for r in summarize(results)}
    assert (rows["bert"]["seeds"], rows["bert"]["diverged"], rows["bert"]["off_schedule"]) == (2, 1, 1)
    assert rows["bert"]["metric_mean"] == pytest.approx(0.60) and rows["bert"]["healthy_mean"] == pytest.approx(0.70)
    assert rows["bermo"]["healthy_mean"] == pytest.approx(0.73)
    (cell,) = compare(results)["cells"]
    assert cell["pairs"] == 2 and (cell["a_diverged"], cell["b_diverged"]) == (1, 0)

    (tmp_path / "runs").mkdir()
    for r in results:
        (tmp_path / "runs" / f"{r['run_id']}.json").write_text(json.dumps(r))
    text = write_report(tmp_path, tmp_path / "report")["markdown"].read_text()
    assert "| l0 | 90% | bert | - | 2 | 1 | 1 | 60.0 +/- 14.1 | 70.0 |" in text
    assert "Off-schedule runs (2): bermo-l0-s0.9-seed1, bert-l0-s0.9-seed0." in text
