"""Every checkpoint that prune, finetune and compact write carries a Hugging Face model card whose
metadata parses back to the run's facts."""

from __future__ import annotations

import json

from bermo_prune.model_card import read_metadata

from test_cli import RECIPES, ok, run

FAST = ["--epochs", "1", "--max-train-samples", "32"]


def test_prune_finetune_and_compact_write_a_model_card(tiny_checkpoint, tiny_glue, tmp_path):
    pruned = tmp_path / "pruned"
    ok(run("prune", tiny_checkpoint, "--arch", "bermo", "--recipe", RECIPES / "sst2-structured-magnitude.yaml",
           "--task", "sst2", "--data", tiny_glue, "--out", pruned, *FAST))
    report = json.loads((pruned / "pruning_report.json").read_text())
    meta = read_metadata(pruned)
    assert meta["base_model"] == str(tiny_checkpoint) and meta["pipeline_tag"] == "text-classification"
    assert meta["bermo_prune"]["pruner"] == "head_neuron_magnitude" and meta["bermo_prune"]["arch"] == "bermo"
    assert meta["bermo_prune"]["sparsity"] == report["sparsity"]["targeted"]
    assert meta["bermo_prune"]["status"] == report["status"]
    (result,) = meta["model-index"][0]["results"]
    assert result["dataset"]["config"] == "sst2"
    assert result["metrics"][0] == {"type": "accuracy", "value": round(report["metrics"]["accuracy"], 4)}
    card = (pruned / "README.md").read_text()
    assert "bermo-prune prune" in card and "head_neuron_magnitude" in card and "| module | sparsity |" in card

    dense = tmp_path / "dense"
    ok(run("finetune", "--model", tiny_checkpoint, "--task", "sst2", "--data", tiny_glue, "--out", dense, *FAST))
    assert read_metadata(dense)["bermo_prune"]["pruner"] is None

    compacted = tmp_path / "compacted"
    ok(run("compact", pruned, "--out", compacted))
    meta = read_metadata(compacted)
    assert meta["bermo_prune"]["pruner"] == "head_neuron_magnitude"
    assert "Compacted" in (compacted / "README.md").read_text()
