"""Knowledge distillation from a fine-tuned teacher, as a recipe's training.distillation."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from bermo_prune import runs
from bermo_prune.errors import BermoPruneError
from bermo_prune.recipes import DistillationSpec, DivergenceSpec, TrainingSpec, load_recipe
from bermo_prune.train import DivergenceGuard, PruningTrainer, distillation_loss, hidden_state_loss


def test_distillation_loss_is_the_scaled_kl_of_softened_distributions():
    student = torch.tensor([[2.0, 0.0], [0.5, 1.5]])
    teacher = torch.tensor([[1.0, 1.0], [3.0, -1.0]])
    t = 2.0
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p = [math.exp(v / t) for v in t_row]
        q = [math.exp(v / t) for v in s_row]
        p = [v / sum(p) for v in p]
        q = [v / sum(q) for v in q]
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    expected = expected / 2 * t * t
    assert distillation_loss(student, teacher, t, regression=False).item() == pytest.approx(expected, rel=1e-5)
    assert distillation_loss(teacher, teacher, t, regression=False).item() == pytest.approx(0.0, abs=1e-7)
    assert distillation_loss(student[:, :1], teacher[:, :1], t, regression=True).item() == pytest.approx((1 + 6.25) / 2)


@pytest.fixture(scope="module")
def fine_tuned(tiny_checkpoint, tiny_glue, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "ft"
    runs.finetune(str(tiny_checkpoint), "bert", "sst2", out, TrainingSpec(epochs=1, batch_size=16, max_length=32),
                  data_dir=str(tiny_glue), progress=False)
    return out


def recipe_with_teacher(tmp_path, teacher, alpha, **distillation):
    data = {
        "name": "kd", "pruner": {"name": "magnitude"}, "target_sparsity": 0.5,
        "schedule": {"shape": "cubic", "start": 0.5, "end": 0.8, "update_every": 1},
        "training": {"epochs": 1, "batch_size": 8, "max_length": 32, "learning_rate": 1e-3,
                     "distillation": {"teacher": str(teacher), "alpha": alpha, "temperature": 2.0, **distillation}},
    }
    path = tmp_path / "kd.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_recipe(path)


def test_pure_distillation_from_itself_starts_at_zero_loss(fine_tuned, tiny_glue, tmp_path):
    """Student = teacher before any step (no dropout in the tiny config): the first loss is the KL
    of identical distributions; with alpha = 0 it is the task loss."""
    first_loss = {}
    for alpha in (1.0, 0.0):
        report = runs.prune(str(fine_tuned), recipe_with_teacher(tmp_path, fine_tuned, alpha), "sst2", None,
                            data_dir=str(tiny_glue), progress=False)
        assert report["status"] in ("ok", "off_schedule", "diverged")
        assert report["training"]["distillation"]["alpha"] == alpha
        first_loss[alpha] = report["loss_curve"][0]["loss"]
    assert first_loss[1.0] == pytest.approx(0.0, abs=1e-6)
    assert first_loss[0.0] > 0.1


def test_a_teacher_that_is_not_a_classifier_is_refused(fine_tuned, tiny_checkpoint, tiny_glue, tmp_path):
    recipe = recipe_with_teacher(tmp_path, tiny_checkpoint, 0.5)  # a bare BertModel: its head would be random
    with pytest.raises(BermoPruneError, match="not a fine-tuned classifier"):
        runs.prune(str(fine_tuned), recipe, "sst2", None, data_dir=str(tiny_glue), progress=False)


def test_cli_teacher_option_sets_the_distillation_teacher(fine_tuned, tiny_glue, tmp_path):
    from test_cli import assert_user_error, ok, run

    out = tmp_path / "kd"
    ok(run("prune", fine_tuned, "--recipe", "sst2-magnitude", "--teacher", fine_tuned, "--data", tiny_glue,
           "--epochs", "1", "--max-train-samples", "16", "--out", out))
    distillation = json.loads((out / "pruning_report.json").read_text())["training"]["distillation"]
    assert distillation == {"teacher": str(fine_tuned), "alpha": 0.5, "temperature": 2.0, "hidden_weight": 0.0}
    result = run("prune", fine_tuned, "--recipe", "sst2-magnitude", "--teacher", tmp_path / "nowhere", "--data", tiny_glue,
                 "--epochs", "1", "--max-train-samples", "16", "--out", tmp_path / "bad")
    assert_user_error(result, "nowhere", "no such model directory")


def test_hidden_state_loss_counts_real_tokens_of_encoder_layers_only():
    teacher = [torch.full((2, 3, 4), 9.0), torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)]  # embeddings, layer 1, layer 2
    student = [torch.zeros(2, 3, 4), torch.ones(2, 3, 4), torch.zeros(2, 3, 4)]
    student[2][:, 2] = 100.0  # position 2 is padding in both sequences
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    assert hidden_state_loss(student, teacher, mask).item() == pytest.approx((1.0 + 0.0) / 2)
    assert hidden_state_loss(teacher, teacher, mask).item() == 0.0


@pytest.mark.parametrize("arch", ["bert", "bermo"])
def test_layerwise_distillation_adds_the_weighted_hidden_state_error(arch, tmp_path):
    from transformers import BertForSequenceClassification, TrainingArguments

    from bermo_prune.models import BermoConfig, BermoForSequenceClassification
    from conftest import tiny_config

    torch.manual_seed(0)
    config = tiny_config(num_labels=2)
    teacher = BertForSequenceClassification(config).eval()
    student = (BermoForSequenceClassification(BermoConfig.from_bert_config(config)) if arch == "bermo"
               else BertForSequenceClassification(config)).train()  # another random draw: the states differ
    batch = {"input_ids": torch.randint(1000, 2000, (4, 6)), "attention_mask": torch.tensor([[1] * 6, [1] * 6, [1] * 4 + [0] * 2, [1] * 3 + [0] * 3]),
             "labels": torch.tensor([0, 1, 1, 0])}
    spec = DistillationSpec(teacher="unused", alpha=0.25, temperature=2.0, hidden_weight=3.0)
    trainer = PruningTrainer(model=student, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"),
                             guard=DivergenceGuard(DivergenceSpec()), mix_learning_rate=1e-3, teacher=teacher, distillation=spec)
    loss = trainer.compute_loss(student, batch)
    with torch.no_grad():
        s = student(**batch, output_hidden_states=True)
        t = teacher(**{k: v for k, v in batch.items() if k != "labels"}, output_hidden_states=True)
    hidden = hidden_state_loss(s.hidden_states, t.hidden_states, batch["attention_mask"])
    assert hidden.item() > 0.01
    expected = 0.75 * s.loss + 0.25 * distillation_loss(s.logits, t.logits, 2.0, regression=False) + 3.0 * hidden
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_layerwise_distillation_needs_a_teacher_of_the_same_depth(fine_tuned, tiny_glue, tmp_path):
    from conftest import tiny_config
    from transformers import BertForSequenceClassification

    deeper = tmp_path / "deeper"
    BertForSequenceClassification(tiny_config(num_hidden_layers=3, num_labels=2)).save_pretrained(deeper)
    recipe = recipe_with_teacher(tmp_path, deeper, 0.5, hidden_weight=1.0)
    with pytest.raises(BermoPruneError, match="3 layers of width 32, the student 2 of width 32"):
        runs.prune(str(fine_tuned), recipe, "sst2", None, data_dir=str(tiny_glue), progress=False)
    report = runs.prune(str(fine_tuned), recipe_with_teacher(tmp_path, deeper, 0.5), "sst2", None,  # logits only: fine
                        data_dir=str(tiny_glue), progress=False)
    assert report["training"]["distillation"]["hidden_weight"] == 0.0
