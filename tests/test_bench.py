"""Sweeps end to end on the tiny checkpoint: results, resume, shards, divergence, reports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from bermo_prune.bench.report import load_results, summarize, write_report
from bermo_prune.bench.runner import pending_runs, run_sweep
from bermo_prune.bench.spec import expand, load_spec
from bermo_prune.cli import main
from bermo_prune.errors import BermoPruneError

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def write_spec(path: Path, checkpoint: Path, data: Path, **overrides) -> Path:
    spec = {
        "name": "tiny",
        "checkpoint": str(checkpoint),
        "task": "sst2",
        "data": str(data),
        "archs": ["bert", "bermo"],
        "recipes": [str(RECIPES / "sst2-magnitude.yaml"), str(RECIPES / "sst2-movement.yaml")],
        "sparsities": [0.5, 0.8],
        "seeds": [0],
        "training": {"max_train_samples": 64, "epochs": 1, "batch_size": 16},
    }
    spec.update(overrides)
    path.write_text(yaml.safe_dump(spec))
    return path


def report_text(results_dir: Path, tmp_path: Path, name: str) -> str:
    """The report minus throughput, the one column that depends on the machine's load."""
    files = write_report(results_dir, tmp_path / name)
    markdown = [line.rsplit("|", 2)[0] for line in Path(files["markdown"]).read_text().splitlines()]
    rows = [{k: v for k, v in row.items() if k != "train_examples_per_s"} for row in json.loads(Path(files["json"]).read_text())]
    return "\n".join(markdown) + json.dumps(rows, sort_keys=True)


def test_sweep_completes_and_report_has_one_row_per_cell(tmp_path, tiny_checkpoint, tiny_glue):
    spec = write_spec(tmp_path / "spec.yaml", tiny_checkpoint, tiny_glue)
    executed = run_sweep(spec, tmp_path / "results")
    assert len(executed) == 8  # 2 archs x 2 pruners x 2 sparsities x 1 seed
    results = load_results(tmp_path / "results")
    assert {r["status"] for r in results} <= {"ok", "off_schedule", "diverged"}  # 4 steps: the freeze may do the pruning
    for r in results:
        n = r["sparsity"]["targeted_params"]
        if r["recipe"]["scope"] == "global":  # exactly round(target * n) zeros
            assert round(r["sparsity"]["targeted"] * n) == round(r["target_sparsity"] * n)
        else:  # rounded within each of the targeted matrices
            assert abs(r["sparsity"]["targeted"] - r["target_sparsity"]) * n <= len(r["sparsity"]["per_layer"]) / 2
        assert r["loss_curve"], r["run_id"]
        assert (r["layer_weights"] is not None) == (r["arch"] == "bermo")
    rows = summarize(results)
    assert sorted((r["arch"], r["pruner"], r["target_sparsity"]) for r in rows) == sorted(
        (a, p, s) for a in ("bert", "bermo") for p in ("magnitude", "movement") for s in (0.5, 0.8)
    )
    assert all(r["seeds"] == 1 for r in rows)
    files = write_report(tmp_path / "results", tmp_path / "report")
    markdown = Path(files["markdown"]).read_text()
    summary, paired = markdown.split("## bermo against bert, paired by seed")
    assert summary.count("| magnitude |") == 4 and summary.count("| movement |") == 4
    assert paired.count("| magnitude |") == 3 and paired.count("| movement |") == 3  # 2 sparsities + pooled
    for key in ("accuracy_plot", "divergence_plot", "layer_weights_plot", "sparsity_tracking_plot"):
        assert Path(files[key]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(json.loads(Path(files["json"]).read_text())) == 8

    # "Kill" the sweep: drop two results (as if it stopped before them) and resume.
    before = report_text(tmp_path / "results", tmp_path, "before")
    for run_id in ("bert-movement-s0.8-seed0", "bermo-magnitude-s0.5-seed0"):
        (tmp_path / "results" / "runs" / f"{run_id}.json").unlink()
    spec_model = load_spec(spec)
    assert {r.run_id for r in pending_runs(spec_model, tmp_path / "results")} == {
        "bert-movement-s0.8-seed0", "bermo-magnitude-s0.5-seed0"
    }
    resumed = run_sweep(spec, tmp_path / "results")
    assert {r.run_id for r in resumed} == {"bert-movement-s0.8-seed0", "bermo-magnitude-s0.5-seed0"}
    assert report_text(tmp_path / "results", tmp_path, "after") == before  # same seeds, same numbers
    assert run_sweep(spec, tmp_path / "results") == []  # nothing left to do


def test_shards_partition_the_sweep_and_give_the_same_report(tmp_path, tiny_checkpoint, tiny_glue):
    spec = write_spec(tmp_path / "spec.yaml", tiny_checkpoint, tiny_glue, recipes=[str(RECIPES / "sst2-magnitude.yaml")],
                      sparsities=[0.5], seeds=[0, 1])
    first = run_sweep(spec, tmp_path / "sharded", shard=(1, 2))
    second = run_sweep(spec, tmp_path / "sharded", shard=(2, 2))
    all_runs = expand(load_spec(spec))
    assert len(first) + len(second) == len(all_runs) == 4
    assert {r.run_id for r in first}.isdisjoint({r.run_id for r in second})
    run_sweep(spec, tmp_path / "whole")
    assert report_text(tmp_path / "sharded", tmp_path, "a") == report_text(tmp_path / "whole", tmp_path, "b")


def test_a_diverging_run_is_recorded_and_the_sweep_goes_on(tmp_path, tiny_checkpoint, tiny_glue):
    spec = write_spec(
        tmp_path / "spec.yaml", tiny_checkpoint, tiny_glue, archs=["bert"], recipes=[str(RECIPES / "sst2-magnitude.yaml")],
        sparsities=[0.5], seeds=[0, 1], training={"max_train_samples": 64, "epochs": 1, "learning_rate": 1.0e6},
    )
    executed = run_sweep(spec, tmp_path / "results")
    assert len(executed) == 2
    results = load_results(tmp_path / "results")
    assert [r["status"] for r in results] == ["diverged", "diverged"]
    assert all(r["reason"] for r in results)
    rows = summarize(results)
    assert rows[0]["diverged"] == 2
    files = write_report(tmp_path / "results", tmp_path / "report")
    assert "diverged_loss_plot" in files


def test_a_crashing_run_is_recorded_and_the_sweep_goes_on(tmp_path, tiny_checkpoint, tiny_glue, monkeypatch):
    spec = write_spec(tmp_path / "spec.yaml", tiny_checkpoint, tiny_glue, archs=["bert"],
                      recipes=[str(RECIPES / "sst2-magnitude.yaml")], sparsities=[0.5, 0.8])
    from bermo_prune import runs

    real_prune = runs.prune

    def flaky(checkpoint, recipe, *args, **kwargs):
        if recipe.target_sparsity == 0.5:
            raise RuntimeError("simulated out-of-memory")
        return real_prune(checkpoint, recipe, *args, **kwargs)

    monkeypatch.setattr(runs, "prune", flaky)
    run_sweep(spec, tmp_path / "results")
    by_id = {r["run_id"]: r for r in load_results(tmp_path / "results")}
    assert by_id["bert-magnitude-s0.5-seed0"]["status"] == "crashed"
    assert "simulated out-of-memory" in by_id["bert-magnitude-s0.5-seed0"]["reason"]
    assert by_id["bert-magnitude-s0.8-seed0"]["status"] in ("ok", "off_schedule", "diverged")
    assert pending_runs(load_spec(spec), tmp_path / "results") == []
    assert [r.run_id for r in pending_runs(load_spec(spec), tmp_path / "results", retry_crashed=True)] == [
        "bert-magnitude-s0.5-seed0"
    ]


def test_dense_baselines_and_retention(tmp_path, tiny_checkpoint, tiny_glue):
    spec = write_spec(tmp_path / "spec.yaml", tiny_checkpoint, tiny_glue, archs=["bermo"],
                      recipes=["dense", str(RECIPES / "sst2-magnitude.yaml")], sparsities=[0.5])
    run_sweep(spec, tmp_path / "results")
    rows = {r["pruner"]: r for r in summarize(load_results(tmp_path / "results"))}
    assert set(rows) == {"dense", "magnitude"}
    assert rows["magnitude"]["dense_mean"] == rows["dense"]["metric_mean"]
    assert rows["magnitude"]["retention"] == pytest.approx(rows["magnitude"]["metric_mean"] / rows["dense"]["metric_mean"])


def test_start_from_a_dense_finetune(tmp_path, tiny_checkpoint, tiny_glue):
    spec = write_spec(tmp_path / "spec.yaml", tiny_checkpoint, tiny_glue, archs=["bermo"],
                      recipes=[str(RECIPES / "sst2-magnitude.yaml")], sparsities=[0.5],
                      start={"seed": 0, "training": {"max_train_samples": 64, "epochs": 1}})
    run_sweep(spec, tmp_path / "results")
    start = tmp_path / "results" / "start" / "bermo"
    assert json.loads((start / "metrics.json").read_text())["arch"] == "bermo"
    (result,) = load_results(tmp_path / "results")
    assert result["checkpoint"] == str(start)
    assert result["training"]["distillation"] is None


def test_start_as_teacher_distils_every_pruning_run(tmp_path, tiny_checkpoint, tiny_glue):
    spec = write_spec(tmp_path / "spec.yaml", tiny_checkpoint, tiny_glue, archs=["bert"],
                      recipes=["dense", str(RECIPES / "sst2-magnitude.yaml")], sparsities=[0.5],
                      start={"seed": 0, "teacher": True, "training": {"max_train_samples": 64, "epochs": 1}})
    run_sweep(spec, tmp_path / "results")
    by_pruner = {r["pruner"]: r for r in load_results(tmp_path / "results")}
    start = str(tmp_path / "results" / "start" / "bert")
    assert by_pruner["magnitude"]["training"]["distillation"]["teacher"] == start
    assert by_pruner["magnitude"]["status"] in ("ok", "off_schedule", "diverged")
    assert by_pruner["dense"]["checkpoint"] == start  # the dense control trains on from the start, undistilled


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"colour": "red"}, "colour: unknown key"),
        ({"sparsities": [1.0]}, "sparsities"),
        ({"archs": ["gpt"]}, "archs"),
        ({"recipes": ["no-such-recipe"]}, "no-such-recipe"),
        ({"recipes": ["sst2-magnitude", str(RECIPES / "sst2-magnitude.yaml")]}, "would both name their runs 'magnitude'"),
        ({"seeds": "zero"}, "seeds"),
        ({"training": {"epochs": -1}}, "training.epochs"),
    ],
)
def test_malformed_spec_is_a_one_line_error(tmp_path, tiny_checkpoint, tiny_glue, change, fragment):
    spec = write_spec(tmp_path / "spec.yaml", tiny_checkpoint, tiny_glue, **change)
    result = CliRunner().invoke(main, ["bench", str(spec), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and fragment in errors[0], result.output
    assert not (tmp_path / "out" / "runs").exists() or not any((tmp_path / "out" / "runs").iterdir())


def test_a_resumed_sweep_may_grow_its_grid_but_not_change_how_runs_are_made(tmp_path, tiny_checkpoint, tiny_glue):
    def spec(name, **change):
        return write_spec(tmp_path / name, tiny_checkpoint, tiny_glue, archs=["bert"],
                          recipes=[str(RECIPES / "sst2-magnitude.yaml")], **change)

    out = tmp_path / "out"
    assert len(run_sweep(spec("first.yaml", sparsities=[0.5]), out)) == 1
    grown = spec("grown.yaml", sparsities=[0.5, 0.8])
    assert [run.run_id for run in run_sweep(grown, out)] == ["bert-magnitude-s0.8-seed0"]
    assert (out / "spec.yaml").read_text() == grown.read_text()  # the record follows the grid
    longer = spec("longer.yaml", sparsities=[0.5, 0.8, 0.9], training={"max_train_samples": 64, "epochs": 2, "batch_size": 16})
    result = CliRunner().invoke(main, ["bench", str(longer), "--out", str(out)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "another training" in errors[0] and "Traceback" not in result.output, result.output
    assert (out / "spec.yaml").read_text() == grown.read_text()
    assert sorted(path.name for path in (out / "runs").iterdir()) == [
        "bert-magnitude-s0.5-seed0.json", "bert-magnitude-s0.8-seed0.json"]
    started = tmp_path / "started"  # a dense start made for the sweep counts as made with its spec
    (started / "start" / "bert").mkdir(parents=True)
    (started / "spec.yaml").write_text(grown.read_text())
    with pytest.raises(BermoPruneError, match="another start"):
        run_sweep(spec("with-start.yaml", sparsities=[0.5], start={"seed": 1}), started)


def test_a_start_that_is_gone_is_trained_again_only_when_asked_and_runs_record_theirs(tmp_path, tiny_checkpoint, tiny_glue):
    def spec(name, sparsities):
        return write_spec(tmp_path / name, tiny_checkpoint, tiny_glue, archs=["bert"],
                          recipes=[str(RECIPES / "sst2-magnitude.yaml")], sparsities=sparsities,
                          start={"seed": 0, "teacher": True, "training": {"max_train_samples": 64, "epochs": 1}})

    out = tmp_path / "out"
    run_sweep(spec("first.yaml", [0.5]), out)
    (first,) = load_results(out)
    digest = first["start"]["weights_sha256"]
    assert len(digest) == 64 and first["start"]["metric"] == json.loads((out / "start/bert/metrics.json").read_text())["best_metric"]
    assert json.loads((out / f"start-bert-{digest[:12]}.json").read_text())["start"] == first["start"]

    for kept in (out / "start" / "bert").iterdir():  # a start copied without its model is not a start
        if kept.name != "metrics.json":
            kept.unlink()
    with pytest.raises(BermoPruneError, match="--new-start"):
        run_sweep(spec("first.yaml", [0.5, 0.8]), out)
    shutil.rmtree(out / "start")  # starts are not kept with results: a resume on another disk has none
    grown = spec("grown.yaml", [0.5, 0.8])
    result = CliRunner().invoke(main, ["bench", str(grown), "--out", str(out), "--no-report"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "--new-start" in errors[0] and "Traceback" not in result.output, result.output
    assert not (out / "start").exists() and len(load_results(out)) == 1  # nothing trained, nothing run

    result = CliRunner().invoke(main, ["bench", str(grown), "--out", str(out), "--no-report", "--new-start"])
    assert result.exit_code == 0, result.output
    by_target = {r["target_sparsity"]: r for r in load_results(out)}
    # the same machine trains the same start bit for bit: one start, and the report says nothing
    assert by_target[0.8]["start"]["weights_sha256"] == digest
    assert "different dense starts" not in report_text(out, tmp_path, "one-start")
    by_target[0.8]["start"]["weights_sha256"] = "f" * 64  # as another machine's start would be
    (out / "runs" / "bert-magnitude-s0.8-seed0.json").write_text(json.dumps(by_target[0.8]))
    text = report_text(out, tmp_path, "two-starts")
    assert "2 different dense starts" in text and "`ffffffffffff`" in text and f"`{digest[:12]}`" in text


def test_two_recipes_of_one_pruner_are_runs_and_rows_of_their_own(tmp_path, tiny_checkpoint, tiny_glue):
    spec = load_spec(write_spec(tmp_path / "spec.yaml", tiny_checkpoint, tiny_glue,
                                recipes=["sst2-movement", "sst2-movement-learned", "sst2-magnitude"]))
    ids = {run.run_id for run in expand(spec)}
    assert {"bert-movement-s0.5-seed0", "bert-movement-learned-s0.5-seed0", "bert-magnitude-s0.5-seed0"} <= ids
    assert len(ids) == len(expand(spec))


def test_bad_shard_is_a_user_error(tmp_path, tiny_checkpoint, tiny_glue):
    spec = write_spec(tmp_path / "spec.yaml", tiny_checkpoint, tiny_glue)
    result = CliRunner().invoke(main, ["bench", str(spec), "--out", str(tmp_path / "out"), "--shard", "3/2"])
    assert result.exit_code == 2 and "--shard" in result.output


def test_parallel_jobs_match_a_serial_sweep(tmp_path, tiny_checkpoint, tiny_glue):
    spec = write_spec(tmp_path / "spec.yaml", tiny_checkpoint, tiny_glue, archs=["bert"],
                      recipes=[str(RECIPES / "sst2-magnitude.yaml")], sparsities=[0.5, 0.8])
    executed = run_sweep(spec, tmp_path / "parallel", jobs=2)
    assert len(executed) == 2
    run_sweep(spec, tmp_path / "serial")
    assert report_text(tmp_path / "parallel", tmp_path, "p") == report_text(tmp_path / "serial", tmp_path, "s")


def _gpu_sweep():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_sweep.py"
    spec = importlib.util.spec_from_file_location("gpu_sweep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_sweep_runs_the_telling_runs_first_and_writes_bench_results(tmp_path, tiny_checkpoint, tiny_glue):
    gpu_sweep = _gpu_sweep()
    spec_path = write_spec(tmp_path / "spec.yaml", tiny_checkpoint, tiny_glue, archs=["bert"],
                           recipes=["dense", str(RECIPES / "sst2-magnitude.yaml"), str(RECIPES / "sst2-random.yaml")],
                           sparsities=[0.5, 0.8, 0.9], seeds_at_high_sparsity={"min_sparsity": 0.9, "seeds": [1]})
    spec = load_spec(spec_path)
    order = [(r.seed, r.pruner, r.sparsity) for r in sorted(expand(spec), key=gpu_sweep.priority(spec, 0.8))]
    assert order == [(0, "dense", 0.0), (0, "magnitude", 0.8), (0, "random", 0.8), (0, "magnitude", 0.9),
                     (0, "random", 0.9), (0, "magnitude", 0.5), (0, "random", 0.5),
                     (1, "magnitude", 0.9), (1, "random", 0.9)]
    favoured = [(r.seed, r.pruner) for r in sorted(expand(spec), key=gpu_sweep.priority(spec, 0.8, ("random",)))]
    assert favoured[-2:] == [(1, "random"), (1, "magnitude")]
    picked = sorted(expand(spec), key=gpu_sweep.priority(spec, 0.8, (), ("bert-random-s0.9-seed*", "*-s0.5-*")))
    assert [r.run_id for r in picked[:4]] == ["bert-random-s0.9-seed0", "bert-magnitude-s0.5-seed0",
                                             "bert-random-s0.5-seed0", "bert-random-s0.9-seed1"]
    # the same result files as `bermo-prune bench`, so the bench resumes what it started and vice versa
    small = write_spec(tmp_path / "small.yaml", tiny_checkpoint, tiny_glue, archs=["bert"],
                       recipes=[str(RECIPES / "sst2-magnitude.yaml")], sparsities=[0.5])
    assert gpu_sweep.main([str(small), "--out", str(tmp_path / "out"), "--jobs", "1", "--threads", "1"]) == 0
    assert pending_runs(load_spec(small), tmp_path / "out") == []
    assert len(run_sweep(small, tmp_path / "out")) == 0
