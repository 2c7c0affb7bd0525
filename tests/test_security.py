"""Loading is safe: pickles are never opened, YAML tags never run code, bad weights are user errors."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

from click.testing import CliRunner

from bermo_prune.cli import main


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _copy_config(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    return dst


def test_pickle_payload_in_a_checkpoint_is_not_executed(tmp_path, tiny_checkpoint):
    evil = _copy_config(tiny_checkpoint, tmp_path / "evil")
    config = json.loads((evil / "config.json").read_text())  # a classifier, so evaluate goes on to load it
    (evil / "config.json").write_text(json.dumps({**config, "architectures": ["BertForSequenceClassification"]}))
    marker = tmp_path / "PWNED"
    with open(evil / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"weight": _Payload(marker)}, fh)
    for command in (["inspect", str(evil)], ["evaluate", str(evil), "--task", "sst2"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2, result.output
        assert "safetensors" in result.output
    assert not marker.exists()


def test_truncated_safetensors_is_a_one_line_error(tmp_path, tiny_checkpoint):
    broken = _copy_config(tiny_checkpoint, tmp_path / "broken")
    data = (tiny_checkpoint / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 3])
    result = CliRunner().invoke(main, ["inspect", str(broken)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if line.startswith("Error: cannot load")]


def test_yaml_tags_in_a_recipe_do_not_run_code(tmp_path):
    marker = tmp_path / "PWNED"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"pruner: !!python/object/apply:os.system ['touch {marker}']\ntarget_sparsity: 0.5\n")
    result = CliRunner().invoke(main, ["recipe", "check", str(recipe)])
    assert result.exit_code == 2, result.output
    assert "not valid YAML" in result.output
    assert not marker.exists()


def test_pickle_payload_in_a_resumable_checkpoint_is_not_executed(tmp_path, tiny_checkpoint, tiny_glue, monkeypatch):
    import pytest

    from bermo_prune.errors import BermoPruneError
    from bermo_prune.io import work_dir_for
    from test_resume import CHECKPOINT_EVERY, prune, prune_until_interrupted, write_recipe

    recipe = write_recipe(tmp_path / "r.yaml", "magnitude")
    out = tmp_path / "run"
    prune_until_interrupted(monkeypatch, tiny_checkpoint, tiny_glue, recipe, out)
    marker = tmp_path / "PWNED"
    for checkpoint in (work_dir_for(out) / "trainer").glob("checkpoint-*"):
        with open(checkpoint / "optimizer.pt", "wb") as fh:
            pickle.dump({"state": _Payload(marker)}, fh)
    with pytest.raises(BermoPruneError, match="cannot resume"):
        prune(tiny_checkpoint, tiny_glue, recipe, out, checkpoint_every=CHECKPOINT_EVERY, resume=True)
    assert not marker.exists()
