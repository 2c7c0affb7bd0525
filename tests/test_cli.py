"""The ``bermo-prune`` command end to end on the tiny checkpoint: fine-tune, evaluate, inspect,
prune with every bundled recipe, list pruners, check and plot recipes, and user mistakes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

import bermo_prune  # noqa: F401  (registers BERMo with the Auto classes)
from bermo_prune.cli import main
from bermo_prune.models import BermoConfig, BermoForSequenceClassification
from bermo_prune.pruning.masks import select_modules
from bermo_prune.recipes import DEFAULT_INCLUDE

from conftest import tiny_config

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
RECIPE_NAMES = ("magnitude", "random", "movement", "soft-movement", "l0", "platon", "obert")
FAST = ["--epochs", "1", "--max-train-samples", "64"]


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def ok(result):
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    return result


def assert_user_error(result, *fragments: str, usage: bool = False):
    """Exit code 2, one 'Error: ...' line naming the problem, no traceback."""
    output = result.output
    assert result.exit_code == 2, f"exit {result.exit_code}: {output}\n{result.exception!r}"
    assert "Traceback" not in output
    assert isinstance(result.exception, SystemExit)
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1, output
    if not usage:  # our own errors: nothing but that line (click's usage errors add a usage hint)
        assert lines == errors, output
        assert result.stderr.strip() == errors[0]
    for fragment in fragments:
        assert fragment in errors[0], output
    return errors[0]


def no_leftovers(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial")]


def encoder_linear_zeros(model) -> tuple[int, int]:
    weights = [m.weight.detach() for m in select_modules(model, [DEFAULT_INCLUDE]).values()]
    assert len(weights) == 12
    return sum(int((w == 0).sum()) for w in weights), sum(w.numel() for w in weights)


@pytest.fixture(scope="module")
def bermo_checkpoint(tmp_path_factory, tokenizer) -> Path:
    path = tmp_path_factory.mktemp("tiny-bermo")
    torch.manual_seed(0)
    BermoForSequenceClassification(BermoConfig.from_bert_config(tiny_config(), num_labels=2)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# --- finetune, evaluate, inspect -------------------------------------------------------------


@pytest.mark.parametrize("arch", ["bert", "bermo"])
def test_finetune_evaluate_inspect(arch, tiny_checkpoint, tiny_glue, tmp_path):
    out = tmp_path / f"{arch}-dense"
    result = ok(run("finetune", "--model", tiny_checkpoint, "--arch", arch, "--data", tiny_glue, *FAST, "--out", out))
    assert "Traceback" not in result.output
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "metrics.json"} <= files
    assert not any(name.endswith(".bin") for name in files)
    assert "trainer" not in files  # the Trainer's scratch dir is removed
    assert not list(tmp_path.glob(f".{out.name}.partial*"))
    assert json.loads((out / "config.json").read_text())["model_type"] == arch

    metrics = json.loads((out / "metrics.json").read_text())
    assert {"status", "metrics", "steps"} <= metrics.keys()
    assert metrics["status"] in ("ok", "diverged")
    assert metrics["steps"] == 2  # 64 examples, batch 32, one epoch
    assert metrics["arch"] == arch and metrics["pruner"] is None
    assert 0.0 <= metrics["metrics"]["accuracy"] <= 1.0

    evaluated = ok(run("evaluate", out, "--task", "sst2", "--data", tiny_glue, "--json"))
    report = json.loads(evaluated.stdout)
    assert 0.0 <= report["accuracy"] <= 1.0
    assert report["examples"] == 32
    assert report["arch"] == arch
    # max_length differs between training (64) and evaluate (128) but the tiny SST-2 dev
    # sentences are at most 44 tokens, so the same model must score the same
    assert report["accuracy"] == pytest.approx(metrics["metrics"]["accuracy"])

    inspected = ok(run("inspect", out, "--json"))
    info = json.loads(inspected.stdout)
    per_layer = info["sparsity"]["per_layer"]
    assert len(per_layer) == 12
    assert all(name.startswith("bert.encoder.layer.") for name in per_layer)
    assert all(value == 0.0 for value in per_layer.values())  # dense fine-tuning
    assert info["arch"] == arch and info["num_labels"] == 2
    if arch == "bermo":
        assert len(info["layer_weights"]) == 3
        assert sum(info["layer_weights"]) == pytest.approx(1.0, abs=1e-6)
        assert isinstance(info["gamma"], float)
        assert metrics["layer_weights"] == pytest.approx(info["layer_weights"])
        assert metrics["gamma"] == pytest.approx(info["gamma"])
    else:
        assert "layer_weights" not in info and "gamma" not in info

    table = ok(run("inspect", out))  # the human-readable form works too
    assert "per-layer sparsity" in table.output


# --- prune -----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["bert", "bermo"])
@pytest.mark.parametrize("recipe", RECIPE_NAMES)
def test_prune_every_recipe(recipe, arch, tiny_checkpoint, tiny_glue, tmp_path):
    out = tmp_path / f"{arch}-{recipe}"
    result = run(
        "prune", tiny_checkpoint, "--recipe", RECIPES / f"sst2-{recipe}.yaml", "--arch", arch,
        "--data", tiny_glue, *FAST, "--target-sparsity", "0.5", "--out", out,
    )
    ok(result)
    assert "Traceback" not in result.output
    assert "plan: 2 optimizer steps" in " ".join(result.output.split())  # stated before training
    assert {"config.json", "model.safetensors", "pruning_report.json"} <= {p.name for p in out.iterdir()}

    report = json.loads((out / "pruning_report.json").read_text())
    # 2 steps: the freeze does all the pruning, which is what off_schedule says
    assert report["status"] in ("ok", "off_schedule", "diverged")
    assert report["sparsity"]["targeted"] == pytest.approx(0.5, abs=1e-6)
    assert report["target_sparsity"] == 0.5
    assert report["pruner"] == report["recipe"]["pruner"]["name"]
    assert report["arch"] == arch
    assert report["steps"] == 2
    assert len(report["sparsity"]["per_layer"]) == 12
    assert report["plan"]["total_steps"] == 2
    assert report["freeze_jump"] == pytest.approx(0.5 - report["sparsity_before_freeze"], abs=1e-6)
    assert {"loss", "task_loss", "sparsity"} <= report["loss_curve"][-1].keys()

    if arch == "bert":
        model = BertForSequenceClassification.from_pretrained(out)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(out)
        assert type(model) is BermoForSequenceClassification
    zeros, total = encoder_linear_zeros(model)
    assert zeros == total // 2
    assert not any("parametrizations" in name for name, _ in model.named_parameters())


# --- pruners and recipes ---------------------------------------------------------------------


def test_pruners_lists_the_builtins():
    result = ok(run("pruners"))
    for name in ("magnitude", "random", "movement", "soft_movement", "l0", "platon", "obert"):
        assert name in result.output


def test_recipe_check():
    result = ok(run("recipe", "check", RECIPES / "sst2-movement.yaml"))
    assert "ok" in result.output and "movement" in result.output


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_is_valid(path):
    result = ok(run("recipe", "check", path))
    assert result.output.startswith("ok ")


def test_recipe_check_names_the_teacher():
    result = ok(run("recipe", "check", RECIPES / "sst2-structured-l0-distilled.yaml"))
    text = " ".join(result.output.split())
    assert "all examples" in text and "distilled from runs/structured-full/ft-bert (alpha 0.9, T 2)" in text
    assert "8,000 examples" in " ".join(ok(run("recipe", "check", RECIPES / "sst2-l0.yaml")).output.split())
    layerwise = " ".join(ok(run("recipe", "check", RECIPES / "sst2-structured-l0-layerwise-83.yaml")).output.split())
    assert "(alpha 0.9, T 2, hidden states x 1)" in layerwise


def test_recipe_check_by_bundled_name():
    result = ok(run("recipe", "check", "sst2-l0"))
    assert "l0" in result.output


def test_recipe_plot_writes_png(tmp_path):
    png = tmp_path / "plots" / "x.png"
    ok(run("recipe", "plot", RECIPES / "sst2-soft-movement.yaml", "-o", png, "--steps", "200"))
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1000


# --- user mistakes ---------------------------------------------------------------------------


def test_unknown_task(tiny_checkpoint, tiny_glue, tmp_path):
    out = tmp_path / "out"
    result = run("finetune", "--model", tiny_checkpoint, "--task", "foo", "--data", tiny_glue, *FAST, "--out", out)
    assert_user_error(result, "unknown GLUE task 'foo'")
    no_leftovers(out)
    result = run("prune", tiny_checkpoint, "--recipe", "sst2-magnitude", "--task", "foo", "--data", tiny_glue, *FAST, "--out", out)
    assert_user_error(result, "unknown GLUE task 'foo'")
    no_leftovers(out)
    assert_user_error(run("evaluate", tiny_checkpoint, "--task", "foo", "--data", tiny_glue), "unknown GLUE task 'foo'")


def test_missing_data_dir(tiny_checkpoint, tmp_path):
    missing = tmp_path / "no-glue"
    result = run("finetune", "--model", tiny_checkpoint, "--data", missing, *FAST, "--out", tmp_path / "out")
    assert_user_error(result, "--data", str(missing), usage=True)
    no_leftovers(tmp_path / "out")


def test_data_without_label_column(tiny_checkpoint, tiny_glue, tmp_path):
    glue = tmp_path / "glue"
    (glue / "SST-2").mkdir(parents=True)
    (glue / "SST-2" / "train.tsv").write_text("sentence\tscore\na fine film\t1\na dull film\t0\n")
    (glue / "SST-2" / "dev.tsv").write_text((tiny_glue / "SST-2" / "dev.tsv").read_text())
    out = tmp_path / "out"
    result = run("finetune", "--model", tiny_checkpoint, "--data", glue, *FAST, "--out", out)
    assert_user_error(result, "train.tsv", "'label'")
    no_leftovers(out)


def test_checkpoint_that_is_not_a_model(tiny_glue, tmp_path):
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "notes.txt").write_text("hello")
    result = run("prune", not_a_model, "--recipe", "sst2-magnitude", "--data", tiny_glue, *FAST, "--out", tmp_path / "out")
    assert_user_error(result, "not a model directory")
    no_leftovers(tmp_path / "out")
    assert_user_error(run("inspect", not_a_model), "not a model directory")


def test_bermo_checkpoint_with_arch_bert(bermo_checkpoint, tiny_glue, tmp_path):
    out = tmp_path / "out"
    result = run("prune", bermo_checkpoint, "--recipe", "sst2-magnitude", "--arch", "bert", "--data", tiny_glue, *FAST, "--out", out)
    assert_user_error(result, "BERMo")
    no_leftovers(out)
    result = run("finetune", "--model", bermo_checkpoint, "--arch", "bert", "--data", tiny_glue, *FAST, "--out", out)
    assert_user_error(result, "BERMo")
    no_leftovers(out)


def test_malformed_recipe(tiny_checkpoint, tiny_glue, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((RECIPES / "sst2-magnitude.yaml").read_text() + "colour: red\n")
    out = tmp_path / "out"
    result = run("prune", tiny_checkpoint, "--recipe", bad, "--data", tiny_glue, *FAST, "--out", out)
    assert_user_error(result, "bad.yaml", "colour: unknown key")
    no_leftovers(out)
    assert_user_error(run("recipe", "check", bad), "colour: unknown key")


def test_target_sparsity_one(tiny_checkpoint, tiny_glue, tmp_path):
    out = tmp_path / "out"
    result = run(
        "prune", tiny_checkpoint, "--recipe", "sst2-magnitude", "--data", tiny_glue, *FAST,
        "--target-sparsity", "1.0", "--out", out,
    )
    assert_user_error(result, "target_sparsity", "< 1")
    no_leftovers(out)


def test_unknown_recipe_name(tiny_checkpoint, tiny_glue, tmp_path):
    out = tmp_path / "out"
    result = run("prune", tiny_checkpoint, "--recipe", "sst2-nonexistent", "--data", tiny_glue, *FAST, "--out", out)
    assert_user_error(result, "sst2-nonexistent")
    no_leftovers(out)


def test_non_empty_output_dir_is_kept(tiny_checkpoint, tiny_glue, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    (out / "sub").mkdir()
    (out / "sub" / "data.bin").write_bytes(b"\x00\x01")

    def snapshot():
        return {
            str(p.relative_to(out)): (p.is_dir(), p.stat().st_mtime_ns, None if p.is_dir() else p.read_bytes())
            for p in sorted(out.rglob("*"))
        }

    before = snapshot()
    result = run("prune", tiny_checkpoint, "--recipe", "sst2-magnitude", "--data", tiny_glue, *FAST, "--out", out)
    assert_user_error(result, "already exists", "--overwrite")
    assert snapshot() == before
    result = run("finetune", "--model", tiny_checkpoint, "--data", tiny_glue, *FAST, "--out", out)
    assert_user_error(result, "already exists")
    assert snapshot() == before
    assert not list(tmp_path.glob(".out.partial*"))


def test_overwrite_replaces_only_on_success(tiny_checkpoint, tiny_glue, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old run")
    # a failing run with --overwrite leaves the old output as it was
    result = run("finetune", "--model", tiny_checkpoint, "--task", "foo", "--data", tiny_glue, *FAST, "--out", out, "--overwrite")
    assert_user_error(result, "unknown GLUE task")
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    # a successful one replaces it entirely
    ok(run("prune", tiny_checkpoint, "--recipe", "sst2-magnitude", "--data", tiny_glue, *FAST, "--out", out, "--overwrite"))
    files = {p.name for p in out.iterdir()}
    assert "old.txt" not in files and "pruning_report.json" in files
    assert not list(tmp_path.glob(".out.partial*"))


def test_evaluate_missing_path(tiny_glue, tmp_path):
    missing = tmp_path / "nowhere"
    assert_user_error(run("evaluate", missing, "--data", tiny_glue), "no such model directory")
    assert_user_error(run("inspect", missing), "no such model directory")


def test_the_result_table_fits_an_80_column_terminal():
    from io import StringIO

    from rich.console import Console

    from bermo_prune.cli import run_table

    def report(arch, pruner, status):
        return {"arch": arch, "pruner": pruner, "target_sparsity": 0.9, "sparsity": {"targeted": 0.9},
                "main_metric": "accuracy", "metrics": {"accuracy": 0.78211}, "status": status, "steps": 12500,
                "train_examples_per_s": 145.2}

    out = StringIO()
    reports = [report("bermo", "head_neuron_magnitude", "off_schedule"), report("bert", None, "ok")]
    reports[1]["main_metric"], reports[1]["metrics"] = "matthews_correlation", {"matthews_correlation": 0.5}
    Console(file=out, width=80, color_system=None).print(run_table(reports))
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    rows = [line for line in lines if line.lstrip().startswith(("bermo", "bert"))]
    assert len(rows) == 2 and "0.7821" in rows[0] and "off_schedule" in rows[0] and "head_neuron_magnitude" in rows[0]
