"""DistributedDataParallel on CPU: two processes under torchrun with the gloo backend. Every rank
ends with the same masks at exactly the target sparsity, and only rank 0 writes the output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file

from test_resume import write_recipe

WORKER = Path(__file__).with_name("ddp_worker.py")


def torchrun(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def ddp_runs(tiny_checkpoint, tiny_glue, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    recipes = [
        write_recipe(root / "movement.yaml", "movement"),  # scores each rank accumulates: averaged by sync()
        write_recipe(root / "l0.yaml", "l0"),  # Lagrange multipliers live outside the model
        write_recipe(root / "platon.yaml", "platon"),  # statistics from DDP-averaged gradients
        write_recipe(root / "obert.yaml", "obert", {"num_grads": 2, "block_size": 8}),  # Fisher and weight updates
        write_recipe(root / "head_neuron_l0.yaml", "head_neuron_l0", {"head_sparsity": 0.5, "neuron_sparsity": 0.5}),
    ]
    torchrun(str(WORKER), str(tiny_checkpoint), str(tiny_glue), str(root), *map(str, recipes), cwd=root)
    return root


@pytest.mark.parametrize("pruner", ["movement", "l0", "platon", "obert", "head_neuron_l0"])
def test_ranks_end_with_identical_masks_at_exact_sparsity(ddp_runs, pruner):
    ranks = [ddp_runs / f"{pruner}-rank{r}.safetensors" for r in (0, 1)]
    with safe_open(str(ranks[0]), "pt") as fh:
        meta = fh.metadata()
    assert meta["world_size"] == "2"
    assert float(meta["targeted_sparsity"]) == pytest.approx(0.5, abs=1e-9)
    first, second = (load_file(str(path)) for path in ranks)
    assert first.keys() == second.keys()
    for name in first:
        assert (first[name] == 0).equal(second[name] == 0), f"masks differ across ranks in {name}"
        assert first[name].equal(second[name]), f"weights differ across ranks in {name}"


def test_a_loss_going_nan_in_one_process_stops_all_of_them(tiny_checkpoint, tiny_glue, tmp_path):
    recipe = write_recipe(tmp_path / "nan-on-rank1.yaml", "magnitude")
    # a process left training would wait for the others in its next all-reduce: the timeout catches a hang
    torchrun(str(WORKER), str(tiny_checkpoint), str(tiny_glue), str(tmp_path), str(recipe), cwd=tmp_path, timeout=240)
    for rank in (0, 1):
        with safe_open(str(tmp_path / f"nan-on-rank1-rank{rank}.safetensors"), "pt") as fh:
            meta = fh.metadata()
        assert meta["status"] == "diverged", meta
        assert "non-finite loss" in meta["reason"], meta


def test_cli_under_torchrun_writes_once(tiny_checkpoint, tiny_glue, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", "magnitude")
    result = torchrun("-m", "bermo_prune.cli", "prune", str(tiny_checkpoint), "--recipe", str(recipe),
                      "--data", str(tiny_glue), "--out", "out", cwd=tmp_path)
    assert result.stdout.count("saved to") == 1  # rank 1 prints nothing either
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "r.yaml"]  # no work dir left behind
    report = json.loads((tmp_path / "out" / "pruning_report.json").read_text())
    assert report["sparsity"]["targeted"] == pytest.approx(0.5, abs=1e-9)
    assert report["steps"] == 12  # 64 examples, 8 per process and step, 3 epochs
