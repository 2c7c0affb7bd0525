"""Resuming interrupted runs and determinism, on the tiny checkpoint: the same seed gives the same
masks and metrics; a run interrupted mid-window (in process, and by a real SIGKILL of the CLI)
resumes from its last complete checkpoint and ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from bermo_prune import runs
from bermo_prune.errors import BermoPruneError
from bermo_prune.io import work_dir_for
from bermo_prune.recipes import load_recipe
from bermo_prune.train import COMPLETE_MARKER, PRUNER_STATE, PruningCallback

# 64 examples / batch 8 = 8 steps per epoch, 3 epochs: 24 steps, pruning window steps 2..16.
CHECKPOINT_EVERY = 4
INTERRUPT_AT = 10


def write_recipe(path: Path, pruner: str, options: dict | None = None, **training) -> Path:
    data = {
        "name": f"resume-{pruner}",
        "pruner": {"name": pruner, "options": options or {}},
        "target_sparsity": 0.5,
        "scope": "global",
        "schedule": {"shape": "cubic", "start": 0.1, "end": 0.7, "update_every": 2},
        "training": {"epochs": 3, "batch_size": 8, "learning_rate": 1e-3, "max_length": 32, **training},
    }
    path.write_text(yaml.safe_dump(data))
    return path


def prune(tiny_checkpoint, tiny_glue, recipe_path, out, **kwargs):
    return runs.prune(str(tiny_checkpoint), load_recipe(recipe_path), "sst2", out, data_dir=str(tiny_glue),
                      progress=False, seed=3, **kwargs)


def prune_until_interrupted(monkeypatch, tiny_checkpoint, tiny_glue, recipe_path, out) -> None:
    """A resumable run stopped by a KeyboardInterrupt at step INTERRUPT_AT, inside the window."""
    original = PruningCallback.on_step_end

    def interrupt(self, args, state, control, **kwargs):
        if state.global_step == INTERRUPT_AT:
            raise KeyboardInterrupt
        return original(self, args, state, control, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(PruningCallback, "on_step_end", interrupt)
        with pytest.raises(KeyboardInterrupt):
            prune(tiny_checkpoint, tiny_glue, recipe_path, out, checkpoint_every=CHECKPOINT_EVERY)


def outcome(out: Path) -> tuple[dict, dict]:
    report = json.loads((out / "pruning_report.json").read_text())
    keep = ("status", "metrics", "best_metric", "sparsity", "steps", "loss_curve", "eval_history")
    return load_file(str(out / "model.safetensors")), {k: report[k] for k in keep}


def assert_same_outcome(a: Path, b: Path) -> None:
    weights_a, report_a = outcome(a)
    weights_b, report_b = outcome(b)
    assert report_a == report_b
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert (weights_a[name] == 0).equal(weights_b[name] == 0), f"masks differ in {name}"
        assert weights_a[name].equal(weights_b[name]), f"weights differ in {name}"


PRUNERS = [
    ("magnitude", {}),
    ("random", {}),  # its ranking is a buffer of the parametrisation: the checkpoint must carry it
    ("movement", {}),
    ("platon", {}),
    ("obert", {"num_grads": 2, "block_size": 8}),  # its smoothed importance and uncertainty are buffers: the checkpoint must carry them
    ("l0", {}),  # samples its gates: resuming must restore the RNG and the Lagrange multipliers
    ("head_neuron_l0", {"head_sparsity": 0.5, "neuron_sparsity": 0.5}),  # gates live outside the model
]


def test_same_seed_twice_gives_identical_masks_and_metrics(tiny_checkpoint, tiny_glue, tmp_path):
    recipe_path = write_recipe(tmp_path / "r.yaml", "movement")
    prune(tiny_checkpoint, tiny_glue, recipe_path, tmp_path / "a")
    prune(tiny_checkpoint, tiny_glue, recipe_path, tmp_path / "b")
    assert_same_outcome(tmp_path / "a", tmp_path / "b")


@pytest.mark.parametrize("pruner,options", PRUNERS, ids=[p for p, _ in PRUNERS])
def test_interrupted_run_resumes_to_the_uninterrupted_result(tiny_checkpoint, tiny_glue, tmp_path, monkeypatch, pruner, options):
    recipe_path = write_recipe(tmp_path / "r.yaml", pruner, options)
    prune(tiny_checkpoint, tiny_glue, recipe_path, tmp_path / "whole", checkpoint_every=CHECKPOINT_EVERY)

    out = tmp_path / "resumed"
    prune_until_interrupted(monkeypatch, tiny_checkpoint, tiny_glue, recipe_path, out)
    assert not out.exists()
    checkpoints = sorted(p.name for p in (work_dir_for(out) / "trainer").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-4", "checkpoint-8"]  # kept for --resume: no work lost

    with pytest.raises(BermoPruneError, match="--resume"):  # a plain re-run must not discard it
        prune(tiny_checkpoint, tiny_glue, recipe_path, out, checkpoint_every=CHECKPOINT_EVERY)
    prune(tiny_checkpoint, tiny_glue, recipe_path, out, checkpoint_every=CHECKPOINT_EVERY, resume=True)
    assert not work_dir_for(out).exists()
    assert_same_outcome(tmp_path / "whole", out)


def test_obert_resumes_with_the_fisher_it_was_collecting(tiny_checkpoint, tiny_glue, tmp_path, monkeypatch):
    """Pruning steps 2, 7, 12, 16 with 5 gradients each: the checkpoint of step 8 falls inside the
    collection for step 12 and must carry its partial inverses."""
    recipe_path = write_recipe(tmp_path / "r.yaml", "obert", {"num_grads": 5, "block_size": 8})
    data = yaml.safe_load(recipe_path.read_text())
    data["schedule"]["update_every"] = 5
    recipe_path.write_text(yaml.safe_dump(data))
    prune(tiny_checkpoint, tiny_glue, recipe_path, tmp_path / "whole", checkpoint_every=CHECKPOINT_EVERY)
    out = tmp_path / "resumed"
    prune_until_interrupted(monkeypatch, tiny_checkpoint, tiny_glue, recipe_path, out)
    state = load_file(str(work_dir_for(out) / "trainer" / "checkpoint-8" / PRUNER_STATE))
    assert any(key.startswith("fisher_inverse.") for key in state)
    prune(tiny_checkpoint, tiny_glue, recipe_path, out, checkpoint_every=CHECKPOINT_EVERY, resume=True)
    assert_same_outcome(tmp_path / "whole", out)


def test_resume_skips_a_checkpoint_cut_short(tiny_checkpoint, tiny_glue, tmp_path, monkeypatch):
    recipe_path = write_recipe(tmp_path / "r.yaml", "magnitude")
    prune(tiny_checkpoint, tiny_glue, recipe_path, tmp_path / "whole", checkpoint_every=CHECKPOINT_EVERY)
    out = tmp_path / "resumed"
    prune_until_interrupted(monkeypatch, tiny_checkpoint, tiny_glue, recipe_path, out)
    newest = work_dir_for(out) / "trainer" / "checkpoint-8"
    (newest / COMPLETE_MARKER).unlink()  # as if the kill came while it was being written
    (newest / "model.safetensors").write_bytes(b"half a file")
    prune(tiny_checkpoint, tiny_glue, recipe_path, out, checkpoint_every=CHECKPOINT_EVERY, resume=True)
    assert_same_outcome(tmp_path / "whole", out)


def test_resume_refuses_other_settings(tiny_checkpoint, tiny_glue, tmp_path, monkeypatch):
    recipe_path = write_recipe(tmp_path / "r.yaml", "magnitude")
    out = tmp_path / "run"
    prune_until_interrupted(monkeypatch, tiny_checkpoint, tiny_glue, recipe_path, out)
    other = write_recipe(tmp_path / "other.yaml", "movement")
    with pytest.raises(BermoPruneError, match="different recipe"):
        prune(tiny_checkpoint, tiny_glue, other, out, checkpoint_every=CHECKPOINT_EVERY, resume=True)
    assert work_dir_for(out).exists()  # the interrupted work is still there


def test_resume_refuses_other_data_even_when_no_folder_was_named(tiny_checkpoint, tiny_glue, tmp_path, monkeypatch):
    """Without --data the data comes from $BERMO_PRUNE_DATA (or the bundled copy): a resume after
    that changed would continue on other data."""
    recipe_path = write_recipe(tmp_path / "r.yaml", "magnitude")
    out = tmp_path / "run"
    prune_until_interrupted(monkeypatch, tiny_checkpoint, tiny_glue, recipe_path, out)
    other = tmp_path / "other-glue"
    shutil.copytree(tiny_glue, other)
    monkeypatch.setenv("BERMO_PRUNE_DATA", str(other))
    with pytest.raises(BermoPruneError, match="different data"):
        runs.prune(str(tiny_checkpoint), load_recipe(recipe_path), "sst2", out, progress=False, seed=3,
                   checkpoint_every=CHECKPOINT_EVERY, resume=True)
    assert work_dir_for(out).exists()


def test_resume_with_overwrite_on_a_finished_run_runs_it_again(tiny_checkpoint, tiny_glue, tmp_path):
    recipe_path = write_recipe(tmp_path / "r.yaml", "magnitude")
    out = tmp_path / "run"
    prune(tiny_checkpoint, tiny_glue, recipe_path, out)
    with pytest.raises(BermoPruneError, match="nothing to resume"):
        prune(tiny_checkpoint, tiny_glue, recipe_path, out, resume=True)
    prune(tiny_checkpoint, tiny_glue, recipe_path, tmp_path / "again")
    prune(tiny_checkpoint, tiny_glue, recipe_path, out, resume=True, overwrite=True)  # scripts that pass both
    assert_same_outcome(out, tmp_path / "again")


def test_sigkill_mid_window_then_resume(tiny_checkpoint, tiny_glue, tmp_path):
    """The CLI in a subprocess, killed with SIGKILL right after a checkpoint inside the pruning
    window; ``--resume`` finishes with the masks and metrics of an uninterrupted run."""
    recipe_path = write_recipe(tmp_path / "r.yaml", "movement", epochs=6)  # 48 steps, window 5..33
    whole, killed = tmp_path / "whole", tmp_path / "killed"

    def command(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "bermo_prune.cli", "prune", str(tiny_checkpoint), "--recipe", str(recipe_path),
                "--data", str(tiny_glue), "--seed", "3", "--checkpoint-every", "2", "--out", str(out), *extra]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command(whole), check=True, env=env, capture_output=True)
    process = subprocess.Popen(command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = work_dir_for(killed) / "trainer" / "checkpoint-10" / COMPLETE_MARKER
    deadline = time.monotonic() + 120
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not killed.exists()
    done = sorted(int(p.name.split("-")[1]) for p in (work_dir_for(killed) / "trainer").glob("checkpoint-*"))
    assert done and max(done) < 33, f"killed too late to test the window: {done}"

    subprocess.run(command(killed, "--resume"), check=True, env=env, capture_output=True)
    assert_same_outcome(whole, killed)


def test_batch_order_depends_only_on_seed_and_epoch():
    from bermo_prune.train import EpochSeededLengthGroupedSampler

    lengths = [(i * 7) % 23 + 1 for i in range(100)]

    def order(seed: int, epoch: int, sampler=None) -> list[int]:
        sampler = sampler or EpochSeededLengthGroupedSampler(8, lengths, seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    shared = EpochSeededLengthGroupedSampler(8, lengths, 1)
    first = order(1, 0, shared)
    order(1, 1, shared)  # whatever ran before does not matter
    assert order(1, 0, shared) == first == order(1, 0)
    assert sorted(first) == list(range(100))
    assert order(1, 1) != first
    assert order(2, 0) != first
