import json
import textwrap

import pytest
from pydantic import BaseModel, ConfigDict

from bermo_prune.errors import BermoPruneError
from bermo_prune.pruning import registry
from bermo_prune.recipes import DEFAULT_INCLUDE, load_recipe, plot_recipe, recipe_to_dict

VALID = """\
name: sst2-dummy-90
description: test recipe
pruner:
  name: dummy
  options: {score_lr: 0.01}
target_sparsity: 0.9
scope: per_layer
schedule:
  shape: cubic
  start: 0.1
  end: 0.7
  update_every: 5
penalty:
  value: 2.0
  start: 0.0
training:
  epochs: 2
  learning_rate: 3e-5
"""


class DummyPruner:
    name = "dummy"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        score_lr: float = 0.1


@pytest.fixture(autouse=True)
def dummy_registry(monkeypatch):
    """A registry holding only DummyPruner, restored after each test."""
    monkeypatch.setattr(registry, "BUILTIN_MODULES", ())
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "_discovered", False)
    registry.register_pruner(DummyPruner)


def write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_valid_recipe_loads(tmp_path):
    recipe = load_recipe(write(tmp_path, VALID))
    assert recipe.name == "sst2-dummy-90"
    assert isinstance(recipe.pruner.options, DummyPruner.Options)
    assert recipe.pruner.options.score_lr == 0.01
    assert recipe.scope == "per_layer"
    assert recipe.training.learning_rate == 3e-5  # YAML reads "3e-5" as a string; it still validates
    assert recipe.training.batch_size == 32
    assert recipe.targets.include == [DEFAULT_INCLUDE]

    sparsity = recipe.sparsity_schedule(1000)
    assert (sparsity.start_step, sparsity.end_step, sparsity.final) == (100, 700, 0.9)
    assert sparsity(400) == pytest.approx(0.875 * 0.9)
    penalty = recipe.penalty_schedule(1000)
    assert (penalty.shape, penalty.start_step, penalty.end_step, penalty.final) == ("linear", 0, 700, 2.0)


def test_minimal_recipe_gets_defaults_and_file_stem_as_name(tmp_path):
    recipe = load_recipe(write(tmp_path, "pruner: {name: dummy}\ntarget_sparsity: 0.5\n", "tiny.yaml"))
    assert recipe.name == "tiny"
    assert recipe.pruner.options == DummyPruner.Options()
    assert recipe.penalty is None and recipe.penalty_schedule(100) is None
    assert recipe.schedule.shape == "cubic" and recipe.schedule.update_every == 10
    assert recipe.divergence.collapse_fraction == 0.95


def test_overrides_are_applied_and_validated(tmp_path):
    path = write(tmp_path, VALID)
    recipe = load_recipe(path, {"target_sparsity": 0.8, "training.epochs": 1.5, "pruner.options.score_lr": 1.0})
    assert (recipe.target_sparsity, recipe.training.epochs, recipe.pruner.options.score_lr) == (0.8, 1.5, 1.0)
    assert load_recipe(path, {"penalty": None}).penalty is None
    with pytest.raises(BermoPruneError, match=r"^.*recipe\.yaml: target_sparsity: must be < 1 \(got 1\.5\)$"):
        load_recipe(path, {"target_sparsity": 1.5})
    with pytest.raises(BermoPruneError, match=r"training\.epoch: unknown key"):
        load_recipe(path, {"training.epoch": 1})
    with pytest.raises(BermoPruneError, match=r"override target_sparsity\.x: target_sparsity is not a mapping"):
        load_recipe(path, {"target_sparsity.x": 1})


def test_recipe_to_dict_is_json_and_includes_options(tmp_path):
    data = recipe_to_dict(load_recipe(write(tmp_path, VALID)))
    assert json.loads(json.dumps(data)) == data
    assert data["pruner"] == {"name": "dummy", "options": {"score_lr": 0.01}}
    assert data["training"]["distillation"] is None


MALFORMED = {
    "unknown top-level key": ("pruner: {name: dummy}\ntarget_sparsity: 0.5\ncolour: red\n", "colour: unknown key"),
    "unknown nested key": ("schedule: {colour: red}\n", "schedule.colour: unknown key"),
    "wrong type": ("training: {epochs: three}\n", "training.epochs: must be a valid number"),
    "sparsity 1.0": ("target_sparsity: 1.0\n", "target_sparsity: must be < 1 (got 1.0)"),
    "sparsity negative": ("target_sparsity: -0.1\n", "target_sparsity: must be >= 0 (got -0.1)"),
    "end before start": ("schedule: {start: 0.5, end: 0.3}\n", "schedule.end: must be after schedule.start"),
    "penalty end before start": (
        "penalty: {value: 1, start: 0.5, end: 0.2}\n",
        "penalty.end: must be after penalty.start (got start=0.5, end=0.2)",
    ),
    "penalty inherits an empty window": (
        "schedule: {shape: one_shot, start: 0.3, end: 0.3}\npenalty: {value: 1}\n",
        "penalty.end: must be after penalty.start (got start=0.3, end=0.3; unset penalty.start/end come from schedule)",
    ),
    "initial above target": (
        "schedule: {initial_sparsity: 0.95}\n",
        "schedule.initial_sparsity: must be <= target_sparsity (got 0.95 > 0.9)",
    ),
    "unknown pruner": ("pruner: {name: foo}\n", "pruner.name: unknown pruner 'foo'; available: dummy"),
    "missing pruner": ("pruner: null\n", "pruner: must be a mapping"),
    "unknown pruner option": ("pruner: {name: dummy, options: {alpha: 1}}\n", "pruner.options.alpha: unknown key"),
    "bad pruner option": (
        "pruner: {name: dummy, options: {score_lr: fast}}\n",
        "pruner.options.score_lr: must be a valid number",
    ),
    "unknown shape": ("schedule: {shape: quadratic}\n", "schedule.shape: must be 'cubic'"),
    "update_every 0": ("schedule: {update_every: 0}\n", "schedule.update_every: must be >= 1 (got 0)"),
    "bad regex": ("targets: {include: ['encoder.(']}\n", "targets.include.0: invalid regex 'encoder.('"),
    "empty include": ("targets: {include: []}\n", "targets.include: must not be empty"),
    "distillation without teacher": (
        "training: {distillation: true}\n",
        "training.distillation: needs a teacher",
    ),
    "distillation alpha": (
        "training: {distillation: {teacher: t, alpha: 1.5}}\n",
        "training.distillation.alpha: must be <= 1 (got 1.5)",
    ),
    "max_length": ("training: {max_length: 1024}\n", "training.max_length: must be <= 512 (got 1024)"),
    "collapse fraction": ("divergence: {collapse_fraction: 0.5}\n", "divergence.collapse_fraction: must be > 0.5"),
    "bad scope": ("scope: everywhere\n", "scope: must be 'global' or 'per_layer'"),
}


@pytest.mark.parametrize("text, expected", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_recipe_names_file_and_field(tmp_path, text, expected):
    base = "pruner: {name: dummy}\ntarget_sparsity: 0.9\n"
    path = write(tmp_path, base + text, "bad.yaml")  # later keys win, so `text` replaces base ones
    with pytest.raises(BermoPruneError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "text, expected",
    [
        ("pruner: {name: dummy\ntarget_sparsity: 0.9\n", "not valid YAML (line "),
        ("- pruner\n- target_sparsity\n", "top level must be a mapping of keys (got a list)"),
        ("", "empty recipe"),
        ("# only a comment\n", "empty recipe"),
    ],
    ids=["invalid yaml", "top-level list", "empty file", "only comments"],
)
def test_unreadable_recipe_is_reported_in_one_line(tmp_path, text, expected):
    path = write(tmp_path, text, "bad.yaml")
    with pytest.raises(BermoPruneError) as info:
        load_recipe(path)
    assert str(info.value).startswith(f"{path}: {expected}")
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(BermoPruneError, match=r"nope\.yaml: no such file$"):
        load_recipe(path)


def test_several_problems_are_joined_on_one_line(tmp_path):
    path = write(tmp_path, "pruner: {name: dummy}\ntarget_sparsity: 2\ntraining: {batch_size: 0}\n")
    with pytest.raises(BermoPruneError) as info:
        load_recipe(path)
    assert str(info.value) == (
        f"{path}: target_sparsity: must be < 1 (got 2); training.batch_size: must be >= 1 (got 0)"
    )


def test_one_shot_may_have_an_empty_window_and_constant_ignores_it(tmp_path):
    base = "pruner: {name: dummy}\ntarget_sparsity: 0.9\n"
    one_shot = load_recipe(write(tmp_path, base + "schedule: {shape: one_shot, start: 0.3, end: 0.3}\n"))
    assert one_shot.sparsity_schedule(100)(30) == 0.9
    constant = load_recipe(write(tmp_path, base + "schedule: {shape: constant, start: 0.5, end: 0.2}\n"))
    assert constant.sparsity_schedule(100)(0) == 0.9


@pytest.mark.parametrize("penalty", ["", "penalty: {value: 0.5, shape: cosine}\n"], ids=["no penalty", "penalty"])
def test_plot_recipe_writes_png(tmp_path, penalty):
    recipe = load_recipe(write(tmp_path, "pruner: {name: dummy}\ntarget_sparsity: 0.9\n" + penalty))
    out = tmp_path / "plots" / "recipe.png"
    plot_recipe(recipe, total_steps=5000, path=out)
    assert out.read_bytes().startswith(b"\x89PNG") and out.stat().st_size > 1000


def test_a_folder_named_like_a_bundled_recipe_is_not_read_as_one(tmp_path, monkeypatch):
    from bermo_prune.recipes import resolve_recipe

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sst2-movement").mkdir()  # e.g. an earlier --out
    assert resolve_recipe("sst2-movement").name == "sst2-movement.yaml"
