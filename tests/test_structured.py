"""Structured pruning (heads and FFN neurons) and compaction on tiny models: exact head/neuron
counts, masks on whole groups (biases included), compaction that removes exactly the pruned
rows/columns and keeps the logits, reload through the Auto classes, the CLI and the recipes."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch.nn.utils import parametrize
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

import bermo_prune  # noqa: F401  (registers BERMo and compacted BERT with the Auto classes)
from bermo_prune.cli import main
from bermo_prune.compact import compact, structure
from bermo_prune.errors import BermoPruneError
from bermo_prune.models import BermoConfig, BermoForSequenceClassification
from bermo_prune.models.compact_shapes import CompactBertForSequenceClassification
from bermo_prune.pruning.registry import available_pruners, get_pruner_class
from bermo_prune.recipes import Recipe, load_recipe, resolve_recipe

from conftest import tiny_config

STEPS = 12
HEADS, NEURONS, LAYERS, HEAD_SIZE = 4, 64, 2, 8  # tiny_config: hidden 32, 4 heads, FFN 64, 2 layers
PRUNERS = ("head_neuron_magnitude", "head_neuron_movement", "head_neuron_l0")


def tiny(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    if arch == "bert":
        return BertForSequenceClassification(tiny_config(num_labels=2))
    return BermoForSequenceClassification(BermoConfig.from_bert_config(tiny_config(), num_labels=2))


def recipe(pruner: str, target: float = 0.7, scope: str = "global", **options) -> Recipe:
    return Recipe.model_validate({
        "name": f"test-{pruner}", "pruner": {"name": pruner, "options": options}, "target_sparsity": target,
        "scope": scope, "schedule": {"shape": "cubic", "start": 0.1, "end": 0.6, "update_every": 2},
    })


def batch(seed: int, size: int = 8, length: int = 12, labels: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 3000, (size, length), generator=g)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if labels:
        out["labels"] = torch.randint(0, 2, (size,), generator=g)
    return out


def train(model, pruner, steps: int = STEPS) -> list[dict]:
    """The Trainer's loop by hand; returns the structure after every step."""
    extra = pruner.param_groups()
    own = {id(p) for g in extra for p in g["params"]}
    optimizer = torch.optim.AdamW([{"params": [p for p in model.parameters() if id(p) not in own]}, *extra], lr=1e-3)
    model.train()
    seen = []
    for step in range(1, steps + 1):
        loss = model(**batch(step)).loss
        if (penalty := pruner.penalty()) is not None:
            loss = loss + penalty
        optimizer.zero_grad()
        loss.backward()
        pruner.before_optimizer_step()
        optimizer.step()
        pruner.on_step_end(step)
        seen.append(pruner.structure_summary())
    return seen


def kept_groups(model) -> tuple[list[list[int]], list[list[int]]]:
    """Indices of the heads / neurons whose weights are not all zero, per layer (masked model)."""
    heads, neurons = [], []
    for layer in model.bert.encoder.layer:
        q = layer.attention.self.query.weight.detach().reshape(HEADS, -1)
        heads.append(q.ne(0).any(dim=1).nonzero().flatten().tolist())
        neurons.append(layer.intermediate.dense.weight.detach().ne(0).any(dim=1).nonzero().flatten().tolist())
    return heads, neurons


def pruned(arch: str, name: str = "head_neuron_magnitude", **recipe_kwargs):
    model = tiny(arch)
    pruner = get_pruner_class(name)(recipe(name, **recipe_kwargs))
    pruner.attach(model, STEPS)
    train(model, pruner)
    pruner.finalize()
    return model.eval()


# --- pruning ---------------------------------------------------------------------------------


def test_structured_pruners_are_registered():
    assert set(PRUNERS) <= set(available_pruners())


@pytest.mark.parametrize("scope", ["global", "per_layer"])
@pytest.mark.parametrize("name", PRUNERS)
def test_prunes_exact_head_and_neuron_counts(name, scope):
    model = tiny("bert")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # 0.5 of 4 heads = 2 per layer; 0.7 of 64 neurons = 44.8 -> 45 per layer, 0.7 of 128 = 89.6 -> 90
    pruner = get_pruner_class(name)(recipe(name, target=0.7, scope=scope, head_sparsity=0.5))
    pruner.attach(model, STEPS)
    seen = train(model, pruner)
    assert pruner.frozen and pruner.frozen_at <= STEPS
    final = pruner.structure_summary()
    pruner.finalize()
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert set(dict(model.named_parameters())) == set(before)

    heads, neurons = kept_groups(model)
    assert [len(h) for h in heads] == [v["heads"] for v in final.values()]
    assert [len(n) for n in neurons] == [v["neurons"] for v in final.values()]
    if scope == "per_layer":
        assert [len(h) for h in heads] == [2, 2]
        assert [len(n) for n in neurons] == [64 - 45, 64 - 45]
    else:
        assert sum(map(len, heads)) == 8 - 4 and all(len(h) >= 1 for h in heads)
        assert sum(map(len, neurons)) == 128 - 90
    # counts only go down along the schedule
    totals = [sum(v["neurons"] for v in s.values()) for s in seen]
    assert totals == sorted(totals, reverse=True) and totals[-1] == sum(map(len, neurons))

    params = dict(model.named_parameters())
    for i, (keep_heads, keep_neurons) in enumerate(zip(heads, neurons)):
        prefix = f"bert.encoder.layer.{i}."
        rows = torch.zeros(HEADS, dtype=torch.bool)
        rows[keep_heads] = True
        rows = rows.repeat_interleave(HEAD_SIZE)
        for proj in ("query", "key", "value"):  # whole rows, biases included
            w, b = params[f"{prefix}attention.self.{proj}.weight"], params[f"{prefix}attention.self.{proj}.bias"]
            assert (w[~rows] == 0).all() and (b[~rows] == 0).all()
            assert (w[rows] != 0).all()
        o = params[f"{prefix}attention.output.dense.weight"]
        assert (o[:, ~rows] == 0).all() and (o[:, rows] != 0).all()
        cols = torch.zeros(NEURONS, dtype=torch.bool)
        cols[keep_neurons] = True
        up_w, up_b = params[f"{prefix}intermediate.dense.weight"], params[f"{prefix}intermediate.dense.bias"]
        assert (up_w[~cols] == 0).all() and (up_b[~cols] == 0).all() and (up_w[cols] != 0).all()
        down = params[f"{prefix}output.dense.weight"]
        assert (down[:, ~cols] == 0).all() and (down[:, cols] != 0).all()
    for n, p in params.items():  # nothing outside the groups gained zeros
        if ".encoder." not in n or n.endswith(("LayerNorm.weight", "LayerNorm.bias", "output.dense.bias")):
            assert not ((p == 0) & (before[n] != 0)).any(), n


def test_pruned_neuron_outputs_exactly_zero():
    model = pruned("bert")
    _, neurons = kept_groups(model)
    captured = {}
    model.bert.encoder.layer[0].intermediate.register_forward_hook(lambda m, a, out: captured.setdefault("out", out))
    with torch.no_grad():
        model(**batch(1, labels=False))
    dead = sorted(set(range(NEURONS)) - set(neurons[0]))
    assert dead and (captured["out"][..., dead] == 0).all()


@pytest.mark.parametrize("scope", ["global", "per_layer"])
def test_unreachable_head_target_fails_at_attach(scope):
    # 0.9 of 8 heads leaves 1 for 2 layers; 0.9 of 4 heads in a layer leaves none
    r = recipe("head_neuron_magnitude", scope=scope, head_sparsity=0.9)
    with pytest.raises(BermoPruneError, match="allow_empty_attention"):
        get_pruner_class("head_neuron_magnitude")(r).attach(tiny("bert"), STEPS)
    r = recipe("head_neuron_magnitude", scope=scope, head_sparsity=0.9, allow_empty_attention=True)
    get_pruner_class("head_neuron_magnitude")(r).attach(tiny("bert"), STEPS)


def test_incomplete_targets_are_refused():
    r = Recipe.model_validate({"name": "q", "pruner": {"name": "head_neuron_magnitude"}, "target_sparsity": 0.5,
                               "targets": {"include": [r"attention\.self\.query$"]}})
    with pytest.raises(BermoPruneError, match="leave out"):
        get_pruner_class("head_neuron_magnitude")(r).attach(tiny("bert"), STEPS)


def test_magnitude_ranks_heads_by_group_norm():
    model = tiny("bert")
    with torch.no_grad():  # head 2 of layer 0 gets tiny weights everywhere it owns
        attention = model.bert.encoder.layer[0].attention
        for proj in (attention.self.query, attention.self.key, attention.self.value):
            proj.weight[16:24] *= 1e-3
            proj.bias[16:24] *= 1e-3
        attention.output.dense.weight[:, 16:24] *= 1e-3
    r = recipe("head_neuron_magnitude", scope="per_layer", head_sparsity=0.25, neuron_sparsity=0.0)
    pruner = get_pruner_class("head_neuron_magnitude")(r)
    pruner.attach(model, STEPS)
    pruner.freeze()
    heads, _ = pruner.keep_masks(1.0)
    assert heads["bert.encoder.layer.0"].tolist() == [True, True, False, True]


def test_movement_group_scores_sum_the_entries():
    model = tiny("bert")
    pruner = get_pruner_class("head_neuron_movement")(recipe("head_neuron_movement"))
    pruner.attach(model, STEPS)
    model(**batch(1)).loss.backward()
    head_scores, neuron_scores = pruner.group_scores()
    layer = model.bert.encoder.layer[1]

    def scores(module, tensor="weight"):
        return getattr(module.parametrizations, tensor)[0].scores

    projections = [getattr(layer.attention.self, p) for p in ("query", "key", "value")]
    head_1 = sum(scores(m)[8:16].sum() + scores(m, "bias")[8:16].sum() for m in projections)
    head_1 = head_1 + scores(layer.attention.output.dense)[:, 8:16].sum()
    neuron_5 = scores(layer.intermediate.dense)[5].sum() + scores(layer.intermediate.dense, "bias")[5]
    neuron_5 = neuron_5 + scores(layer.output.dense)[:, 5].sum()
    assert head_1.abs() > 0 and neuron_5.abs() > 0
    assert head_scores["bert.encoder.layer.1"][1].item() == pytest.approx(head_1.item(), rel=1e-5)
    assert neuron_scores["bert.encoder.layer.1"][5].item() == pytest.approx(neuron_5.item(), rel=1e-5)


def test_l0_gates_scale_head_outputs_and_learn():
    model = tiny("bert")
    pruner = get_pruner_class("head_neuron_l0")(recipe("head_neuron_l0", head_sparsity=0.5))
    pruner.attach(model, STEPS)
    name = "bert.encoder.layer.0"
    with torch.no_grad():
        pruner.head_alpha[name][1] = -20.0  # gate always closed
    captured = {}
    model.bert.encoder.layer[0].attention.output.dense.register_forward_pre_hook(lambda m, a: captured.setdefault("x", a[0]))
    model.train()
    loss = model(**batch(1)).loss + sum(pruner.loss_terms().values(), torch.zeros(()))
    assert (captured["x"][..., 8:16] == 0).all() and (captured["x"][..., :8] != 0).any()
    loss.backward()
    assert pruner.head_alpha[name].grad.abs().sum() > 0 and pruner.neuron_alpha[name].grad.abs().sum() > 0
    assert 0 < pruner.current_sparsity() < 1
    pruner.freeze()
    assert pruner.hooks == [] and pruner.penalty() is None
    assert sum(v["heads"] for v in pruner.structure_summary().values()) == 4


def test_l0_lagrangian_tracks_the_schedule():
    """Random labels, so the task does not hold any gate open: the multipliers alone must bring
    the expected head and neuron sparsities to the schedule's targets by the window's end."""
    model = tiny("bert")
    r = Recipe.model_validate({
        "name": "track", "pruner": {"name": "head_neuron_l0", "options": {"head_sparsity": 0.5}}, "target_sparsity": 0.75,
        "schedule": {"shape": "cubic", "start": 0.1, "end": 0.7, "update_every": 10},
    })
    pruner = get_pruner_class("head_neuron_l0")(r)
    total = 300
    pruner.attach(model, total)
    optimizer = torch.optim.AdamW([{"params": list(model.parameters())}, *pruner.param_groups()], lr=5e-5)
    for step in range(1, pruner.schedule.end_step):
        loss = model(**batch(step, size=4)).loss + sum(pruner.loss_terms().values(), torch.zeros(()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.on_step_end(step)
        if step < pruner.schedule.start_step:
            assert pruner.lambda_1.abs().sum() == 0  # no constraint before the window
    heads, neurons, _ = pruner.expected_sparsities()
    assert heads.item() == pytest.approx(0.5, abs=0.05) and neurons.item() == pytest.approx(0.75, abs=0.05)


# --- compaction ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["bert", "bermo"])
def test_compaction_removes_exactly_the_pruned_groups(arch, tmp_path):
    model = pruned(arch, scope="global", head_sparsity=0.5)
    heads, neurons = kept_groups(model)
    masked = {n: p.detach().clone() for n, p in model.named_parameters()}
    inputs = batch(7, size=4, labels=False)
    inputs["attention_mask"][1, 8:] = 0  # padding goes through the smaller attention too
    with torch.no_grad():
        expected = model(**inputs).logits

    small = compact(model).eval()
    assert [s["heads"] for s in structure(small)] == [len(h) for h in heads]
    assert [s["intermediate"] for s in structure(small)] == [len(n) for n in neurons]
    assert small.config.layer_num_heads == [len(h) for h in heads]
    assert small.config.layer_intermediate_sizes == [len(n) for n in neurons]
    params = dict(small.named_parameters())
    for i, (keep_heads, keep_neurons) in enumerate(zip(heads, neurons)):
        prefix = f"bert.encoder.layer.{i}."
        rows = torch.tensor([h * HEAD_SIZE + j for h in keep_heads for j in range(HEAD_SIZE)])
        for proj in ("query", "key", "value"):
            assert params[f"{prefix}attention.self.{proj}.weight"].shape == (len(rows), 32)
            assert torch.equal(params[f"{prefix}attention.self.{proj}.weight"], masked[f"{prefix}attention.self.{proj}.weight"][rows])
            assert torch.equal(params[f"{prefix}attention.self.{proj}.bias"], masked[f"{prefix}attention.self.{proj}.bias"][rows])
        assert torch.equal(params[f"{prefix}attention.output.dense.weight"], masked[f"{prefix}attention.output.dense.weight"][:, rows])
        cols = torch.tensor(keep_neurons)
        assert params[f"{prefix}intermediate.dense.weight"].shape == (len(cols), 32)
        assert torch.equal(params[f"{prefix}intermediate.dense.weight"], masked[f"{prefix}intermediate.dense.weight"][cols])
        assert torch.equal(params[f"{prefix}output.dense.weight"], masked[f"{prefix}output.dense.weight"][:, cols])
        assert torch.equal(params[f"{prefix}output.dense.bias"], masked[f"{prefix}output.dense.bias"])
    with torch.no_grad():
        assert torch.allclose(small(**inputs).logits, expected, atol=1e-5, rtol=0)

    small.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == ("bert-compact" if arch == "bert" else "bermo")
    assert config["layer_num_heads"] == [len(h) for h in heads]
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is (CompactBertForSequenceClassification if arch == "bert" else BermoForSequenceClassification)
    assert structure(reloaded) == structure(small)
    with torch.no_grad():
        assert torch.allclose(reloaded(**inputs).logits, expected, atol=1e-5, rtol=0)


def test_layer_without_heads_or_neurons_compacts_and_reloads(tmp_path):
    model = tiny("bermo")
    r = recipe("head_neuron_magnitude", allow_empty_attention=True)
    pruner = get_pruner_class("head_neuron_magnitude")(r)
    pruner.attach(model, STEPS)
    layer0, layer1 = (layer.name for layer in pruner.layers)
    pruner.apply_keep({layer0: torch.zeros(HEADS, dtype=torch.bool), layer1: torch.tensor([True, False, True, False])},
                      {layer0: torch.ones(NEURONS, dtype=torch.bool), layer1: torch.zeros(NEURONS, dtype=torch.bool)})
    pruner.frozen = True
    pruner.finalize()
    model.eval()
    inputs = batch(3, labels=False)
    with torch.no_grad():
        expected = model(**inputs).logits
    small = compact(model).eval()
    assert structure(small) == [{"heads": 0, "intermediate": 64}, {"heads": 2, "intermediate": 0}]
    small.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(small(**inputs).logits, expected, atol=1e-5, rtol=0)
        assert torch.allclose(reloaded(**inputs).logits, expected, atol=1e-5, rtol=0)
    assert structure(compact(reloaded)) == structure(small)  # compacting again changes nothing


def test_compact_refuses_parametrised_models():
    model = tiny("bert")
    get_pruner_class("head_neuron_magnitude")(recipe("head_neuron_magnitude")).attach(model, STEPS)
    with pytest.raises(BermoPruneError, match="finalize"):
        compact(model)


# --- CLI and recipes -------------------------------------------------------------------------


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def test_cli_compact(tmp_path, tokenizer):
    source = tmp_path / "pruned"
    pruned("bert", head_sparsity=0.5).save_pretrained(source)
    tokenizer.save_pretrained(source)
    out = tmp_path / "small"
    result = run("compact", source, "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "compaction_report.json").read_text())
    assert report["arch"] == "bert-compact" and report["parameters_after"] < report["parameters_before"]
    assert sum(layer["heads_after"] for layer in report["layers"]) == 4
    assert (out / "tokenizer.json").is_file() or (out / "vocab.txt").is_file()
    assert type(AutoModelForSequenceClassification.from_pretrained(out)) is CompactBertForSequenceClassification

    again = run("compact", source, "--out", out)  # exists: user error, nothing touched
    assert again.exit_code == 2 and again.output.startswith("Error: ") and "--overwrite" in again.output
    assert run("compact", out, "--out", out, "--overwrite").exit_code == 0  # a compacted checkpoint compacts again
    missing = run("compact", tmp_path / "nope", "--out", tmp_path / "x")
    assert missing.exit_code == 2 and "Traceback" not in missing.output
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", ["magnitude", "movement", "l0"])
def test_bundled_structured_recipes_validate(name):
    r = load_recipe(resolve_recipe(f"sst2-structured-{name}"))
    assert r.pruner.name == f"head_neuron_{name}"
    assert r.pruner.options.head_sparsity == 0.5 and r.pruner.options.neuron_sparsity == 0.75
    assert run("recipe", "check", f"sst2-structured-{name}").exit_code == 0


@pytest.mark.parametrize("name", ["magnitude", "l0"])
def test_cli_prune_with_a_structured_recipe_then_compact(name, tiny_checkpoint, tiny_glue, tmp_path):
    out = tmp_path / "pruned"
    result = run("prune", tiny_checkpoint, "--arch", "bermo", "--recipe", f"sst2-structured-{name}", "--data", tiny_glue,
                 "--epochs", "2", "--max-train-samples", "64", "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "pruning_report.json").read_text())
    # 50% of heads and 75% of neurons in equal-sized groups per layer: 2 + 16 of 4 + 64 per layer remain
    heads_kept = LAYERS * HEADS // 2
    neurons_kept = LAYERS * NEURONS - round(0.75 * LAYERS * NEURONS)
    expected = 1 - (heads_kept * 4 * HEAD_SIZE * 32 + neurons_kept * 2 * 32) / (LAYERS * (4 * 32 * 32 + 2 * 32 * 64))
    assert report["sparsity"]["targeted"] == pytest.approx(expected)
    small = tmp_path / "small"
    assert run("compact", out, "--out", small).exit_code == 0
    layers = json.loads((small / "compaction_report.json").read_text())["layers"]
    assert sum(layer["heads_after"] for layer in layers) == heads_kept
    assert sum(layer["intermediate_after"] for layer in layers) == neurons_kept
    assert json.loads((small / "config.json").read_text())["model_type"] == "bermo"


def test_compacted_bert_is_evaluated_and_inspected_from_the_cli(tiny_checkpoint, tiny_glue, tmp_path):
    out, small = tmp_path / "pruned", tmp_path / "small"
    assert run("prune", tiny_checkpoint, "--arch", "bert", "--recipe", "sst2-structured-magnitude", "--data", tiny_glue,
               "--epochs", "1", "--max-train-samples", "64", "--out", out).exit_code == 0
    assert run("compact", out, "--out", small).exit_code == 0
    assert json.loads((small / "config.json").read_text())["model_type"] == "bert-compact"
    masked = json.loads(run("evaluate", out, "--task", "sst2", "--data", tiny_glue, "--json").output)
    compacted = json.loads(run("evaluate", small, "--task", "sst2", "--data", tiny_glue, "--json").output)
    assert compacted["accuracy"] == masked["accuracy"]
    info = json.loads(run("inspect", small, "--json").output)
    assert info["parameters"] < json.loads(run("inspect", out, "--json").output)["parameters"]
    assert run("prune", small, "--arch", "bermo", "--recipe", "sst2-magnitude", "--out", tmp_path / "x").exit_code == 2


def test_cli_prune_and_compact_in_one_go(tiny_checkpoint, tiny_glue, tmp_path):
    out = tmp_path / "small"
    result = run("prune", tiny_checkpoint, "--arch", "bert", "--recipe", "sst2-structured-magnitude", "--data", tiny_glue,
                 "--epochs", "1", "--max-train-samples", "64", "--compact", "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "pruning_report.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "bert-compact"
    assert config["layer_num_heads"] == [layer["heads"] for layer in report["compacted"]["layers"]]
    assert sum(config["layer_num_heads"]) == LAYERS * HEADS // 2
    evaluated = json.loads(run("evaluate", out, "--task", "sst2", "--data", tiny_glue, "--json").output)
    assert evaluated["accuracy"] == pytest.approx(report["metrics"]["accuracy"])
