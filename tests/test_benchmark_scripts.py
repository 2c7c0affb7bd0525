"""The benchmark scripts run end to end in their --tiny modes (random tiny models, seconds), so a
script that no longer fits the library fails here rather than at the next full-scale run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bermo_prune.recipes import load_recipe, recipe_to_dict

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_structured_latency_tiny(tmp_path):
    run_script("structured_latency.py", "--tiny", "--threads", "1", "--repeats", "3", "--out", str(tmp_path))
    report = json.loads((tmp_path / "structured_latency.json").read_text())
    assert report["tiny"] and len(report["latency"]) == 4
    assert all(row["speedup"] > 0 for row in report["latency"])


def test_deploy_latency_tiny(tmp_path):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    run_script("deploy_latency.py", "--tiny", "--threads", "1", "--repeats", "3", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert {tuple(sorted(row)) for row in rows} == {
        ("batch", "dev_accuracy", "length", "model", "precision", "runtime", "size_mb", "speedup")}
    assert {(row["model"], row["runtime"], row["precision"]) for row in rows} == {
        (model, runtime, precision) for model in ("dense", "compact")
        for runtime, precision in (("pytorch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
                                   ("onnxruntime-fused", "fp32"), ("onnxruntime-fused", "int8"))}
    reference = [row["speedup"] for row in rows if (row["model"], row["runtime"]) == ("dense", "pytorch")]
    assert reference == [1.0] * 4
    sizes = {(row["model"], row["precision"], row["runtime"]): row["size_mb"] for row in rows}
    assert sizes[("dense", "int8", "onnxruntime")] < 0.5 * sizes[("dense", "fp32", "onnxruntime")]


def test_pruner_quality_summary_rows_and_targets(tmp_path):
    def run(budget, pruner, sparsity, seed, accuracy, status="ok", start=None, lag=None):
        folder = tmp_path / budget / "runs"
        folder.mkdir(parents=True, exist_ok=True)
        result = {"arch": "bert", "pruner": pruner, "target_sparsity": sparsity, "seed": seed, "status": status,
                  "main_metric": "accuracy", "metrics": {"accuracy": accuracy}}
        if start:  # the dense start the run pruned (runs made before runs recorded it have none)
            result["start"] = {"weights_sha256": start * 64, "metric": 0.88, "device": "cpu"}
        if lag is not None:  # a logged run, its sparsity ``lag`` under the schedule (masks every 10 steps)
            recipe = load_recipe(ROOT / "recipes" / "sst2-platon.yaml", {"target_sparsity": sparsity})
            schedule = recipe.sparsity_schedule(500)
            result.update(recipe=recipe_to_dict(recipe), steps=500, loss_curve=[
                {"step": t, "loss": 0.3, "sparsity": max(0.0, schedule(t) - lag)} for t in range(10, 501, 10)])
        (folder / f"bert-{pruner}-s{sparsity}-seed{seed}.json").write_text(json.dumps(result))

    run("short", "dense", 0.0, 0, 0.86)
    run("short", "platon", 0.9, 0, 0.80)
    run("short", "platon", 0.9, 1, 0.82)
    run("short", "one-shot-magnitude", 0.9, 0, 0.77)
    run("short", "random", 0.9, 0, 0.509, status="diverged")
    run("full", "dense", 0.0, 0, 0.90)
    run("full", "platon", 0.9, 0, 0.88, lag=0.0)
    run("full", "random", 0.9, 0, 0.89, lag=0.02)
    run("full", "l0", 0.8, 0, 0.87, start="a")  # resumed elsewhere with --new-start: another start
    run_script("pruner_quality.py", str(tmp_path))

    rows = json.loads((tmp_path / "summary.json").read_text())
    assert {tuple(sorted(row)) for row in rows} == {("budget", "dense_metric", "diverged", "mean_metric", "pruner",
                                                     "retention", "seeds", "sparsity", "std_metric")}
    cell = {(row["budget"], row["pruner"]): row for row in rows}
    platon = cell[("short", "platon")]
    assert platon["seeds"] == 2 and platon["mean_metric"] == pytest.approx(0.81)
    assert platon["retention"] == pytest.approx(0.81 / 0.86) and platon["std_metric"] == pytest.approx(0.01414, abs=1e-4)
    assert cell[("full", "platon")]["std_metric"] is None  # one seed has no spread
    assert cell[("short", "random")]["diverged"] == 1
    text = (tmp_path / "summary.md").read_text()
    assert "full budget, 90%: best pruner keeps >= 97% of dense: met (platon 97.8%)" in text
    assert "full budget, 95%: best pruner keeps >= 93% of dense: no data yet" in text
    assert "short budget, 90%: best pruner keeps >= 93% of dense: met (platon 94.2%)" in text
    assert "beats the torch.nn.utils.prune anchor by >= 2 points: met (+4.0)" in text
    assert "every pruner beats random masks at every sparsity: missed (full platon 90%)" in text
    assert (tmp_path / "accuracy_short.png").is_file() and (tmp_path / "accuracy_full.png").is_file()
    marked = [line for line in text.splitlines() if "†" in line]
    assert [line.split(" |")[0] for line in marked[:1]] == ["| l0"] and "`aaaaaaaaaaaa`" in marked[1], marked
    assert len(marked) == 2  # the l0 cell and its footnote; the control's own start goes unmarked
    # Schedule tracking: only the budget with logged runs has it.
    assert "| platon | 90% | 0.0 | 0.0 | - |" in text and "| random | 90% | 2.0 | 2.0 | - |" in text
    assert "| l0 | 80% | - | - | - |" in text  # no log: nothing to say
    assert text.count("Schedule tracking") == 1 and (tmp_path / "tracking_full.png").is_file()
    assert not (tmp_path / "tracking_short.png").exists()


# Runs kept in a results folder outside its spec's grid, each said in that folder's README.
RUNS_OUTSIDE_THE_GRID = {
    "pruner_health": {"bert-l0-s0.95-seed0", "bert-platon-s0.9-seed0", "bert-obert-s0.9-seed0"},
}


def test_committed_sweeps_match_their_specs(monkeypatch):
    """Every committed results folder still loads as a sweep of this code; its runs are runs of its
    spec; its spec record is the spec the README's command passes (benchmarks/specs/, same name),
    so that resuming a sweep with that command is allowed and runs only the missing runs."""
    from bermo_prune.bench.spec import expand, load_spec

    monkeypatch.chdir(ROOT)  # probe specs name their recipe files relative to the repository
    specs = {load_spec(path).name: path for path in (ROOT / "benchmarks" / "specs").rglob("*.yaml")
             if "recipes" in (yaml.safe_load(path.read_text()) or {})}
    records = sorted((ROOT / "benchmarks" / "results").rglob("spec.yaml"))
    assert len(records) >= 10
    for record in records:
        spec = load_spec(record)
        folder = record.parent.relative_to(ROOT / "benchmarks" / "results").as_posix()
        stray = {path.stem for path in (record.parent / "runs").glob("*.json")} - {run.run_id for run in expand(spec)}
        assert stray == RUNS_OUTSIDE_THE_GRID.get(folder, set()), folder
        if spec.name in specs:
            assert record.read_text() == specs[spec.name].read_text(), f"{record} differs from {specs[spec.name]}"
