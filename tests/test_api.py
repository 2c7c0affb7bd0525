"""The Python API in a user's own script: examples/prune_with_trainer.py end to end on a tiny
model, with a plain transformers.Trainer and the pruner added by PruningCallback alone."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

import bermo_prune
from bermo_prune import BermoPruneError, PruningCallback, load_recipe, to_bermo
from bermo_prune.pruning.masks import select_modules
from bermo_prune.recipes import DEFAULT_INCLUDE

from conftest import tiny_config

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "prune_with_trainer.py"


def run_example(monkeypatch, *args):
    spec = importlib.util.spec_from_file_location("prune_with_trainer", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["prune_with_trainer.py", *map(str, args)])
    module.main()


@pytest.mark.parametrize(("recipe", "arch"), [("sst2-soft-movement", "bert"), ("sst2-movement-learned", "bermo")])
def test_the_example_script_prunes_with_a_plain_trainer(monkeypatch, tmp_path, tiny_checkpoint, tiny_glue, capsys,
                                                        recipe, arch):
    run_example(monkeypatch, "--checkpoint", tiny_checkpoint, "--data", tiny_glue, "--recipe", recipe, "--arch", arch,
                "--target-sparsity", 0.5, "--max-train-samples", 64, "--epochs", 2, "--out", tmp_path / "out")
    assert "sparsity 50.00%" in capsys.readouterr().out
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert model.config.model_type == arch
    weights = [m.weight for m in select_modules(model, [DEFAULT_INCLUDE]).values()]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == round(0.5 * sum(w.numel() for w in weights))  # real zeros at exactly the target
    assert not any("parametrizations" in name for name, _ in model.named_parameters())


def test_the_callback_trains_the_pruners_parameters_and_logs_its_terms(tmp_path, tiny_checkpoint, tiny_glue):
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from bermo_prune.data import load_split, tokenize_dataset

    model, tokenizer = bermo_prune.load_classifier(tiny_checkpoint, "bert")
    train = tokenize_dataset(load_split("sst2", "train", tiny_glue), tokenizer, "sst2", 32)
    pruning = PruningCallback(load_recipe("sst2-soft-movement", {"target_sparsity": 0.5}))
    trainer = Trainer(model=model, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer),
                      args=TrainingArguments(output_dir=str(tmp_path), num_train_epochs=3, per_device_train_batch_size=8,
                                             logging_steps=2, report_to=[], save_strategy="no", use_cpu=True),
                      callbacks=[pruning])
    scores = [p.scores for p in pruning.pruner.parametrizations().values()]
    start = [s.detach().clone() for s in scores]
    trainer.train()
    groups = [g for g in trainer.optimizer.param_groups if g.get("bermo_prune")]
    assert len(groups) == 1 and groups[0]["initial_lr"] == pruning.recipe.pruner.options.score_lr
    assert groups[0]["lr"] == trainer.optimizer.param_groups[0]["lr"] == 0.0  # decayed with the schedule
    assert all(id(s) not in {id(p) for g in trainer.optimizer.param_groups if not g.get("bermo_prune") for p in g["params"]}
               for s in scores)  # moved out of the model's own groups
    assert any(not torch.equal(s.detach(), s0) for s, s0 in zip(scores, start))  # the scores learned
    logged = [h for h in trainer.state.log_history if "sparsity" in h]
    assert logged and any("penalty" in h for h in logged)  # the penalty acted inside the window, and was logged
    pruning.finalize()
    assert pruning.final_sparsity == pytest.approx(0.5, abs=1e-3)


def test_to_bermo_keeps_the_weights_and_refuses_other_models():
    torch.manual_seed(0)
    bert = BertForSequenceClassification(tiny_config(num_labels=2)).eval()
    bermo = to_bermo(bert).eval()
    assert torch.equal(bermo.classifier.weight, bert.classifier.weight)
    assert torch.equal(bermo.bert.encoder.layer[1].output.dense.weight, bert.bert.encoder.layer[1].output.dense.weight)
    assert bermo.layer_weights() == pytest.approx([1 / 3] * 3)  # embeddings + 2 layers, uniform
    with pytest.raises(BermoPruneError, match="BertForSequenceClassification"):
        to_bermo(bermo)
