"""The user-mistake matrix: each mistake ends in exactly one 'Error: ...' line naming the problem,
exit code 2, no traceback, and nothing left behind in the output location."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from transformers import BertForSequenceClassification

from bermo_prune.models import BermoConfig, BermoForSequenceClassification
from test_cli import RECIPES, assert_user_error, run

from conftest import tiny_config


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_checkpoint, tiny_glue, tokenizer) -> Path:
    """Everything the mistakes need, built once: bad recipes, bad data, bad checkpoints."""
    root = tmp_path_factory.mktemp("mistakes")
    magnitude = yaml.safe_load((RECIPES / "sst2-magnitude.yaml").read_text())

    def recipe(name: str, **changes) -> None:
        data = {**magnitude, **changes}
        (root / f"{name}.yaml").write_text(yaml.safe_dump(data))

    (root / "broken.yaml").write_text("pruner: {name: magnitude\ntarget_sparsity: [0.5\n")
    recipe("unknown-key", colour="red")
    recipe("negative", target_sparsity=-0.1)
    recipe("backwards", schedule={**magnitude["schedule"], "start": 0.8, "end": 0.2})
    recipe("unknown-pruner", pruner={"name": "telepathy"})
    recipe("infinite-lr", training={**magnitude["training"], "learning_rate": float("inf")})
    recipe("nan-option", pruner={"name": "soft_movement", "options": {"init_score": float("nan")}})  # no bound to catch it
    recipe("lambda-above-cap", pruner={"name": "soft_movement", "options": {"initial_lambda": 2e4, "max_lambda": 1e4}})

    no_label = root / "glue-no-label" / "SST-2"
    no_label.mkdir(parents=True)
    for split in ("train", "dev"):
        rows = (tiny_glue / "SST-2" / f"{split}.tsv").read_text().splitlines()
        (no_label / f"{split}.tsv").write_text("\n".join(["sentence"] + [r.split("\t")[0] for r in rows[1:]]) + "\n")
    empty = root / "glue-empty" / "SST-2"
    empty.mkdir(parents=True)
    (empty / "train.tsv").write_text("")
    shutil.copy(tiny_glue / "SST-2" / "dev.tsv", empty / "dev.tsv")

    (root / "not-a-model").mkdir()
    (root / "not-a-model" / "notes.txt").write_text("hello")
    truncated = root / "truncated"
    shutil.copytree(tiny_checkpoint, truncated)
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    bermo = root / "bermo"
    torch.manual_seed(0)
    BermoForSequenceClassification(BermoConfig.from_bert_config(tiny_config(), num_labels=2)).save_pretrained(bermo)
    tokenizer.save_pretrained(bermo)

    # Weights that do not fit their config: transformers would make up the rest at random.
    for name, key, grow in (("wider-config", "intermediate_size", lambda n: 2 * n),
                            ("deeper-config", "num_hidden_layers", lambda n: n + 1)):
        edited = root / name
        shutil.copytree(tiny_checkpoint, edited)
        config = json.loads((edited / "config.json").read_text())
        config[key] = grow(config[key])
        (edited / "config.json").write_text(json.dumps(config))

    three_labels = root / "three-labels"
    BertForSequenceClassification(tiny_config(num_labels=3)).save_pretrained(three_labels)
    tokenizer.save_pretrained(three_labels)

    finished = root / "finished"
    finished.mkdir()
    (finished / "pruning_report.json").write_text("{}")
    (root / "a-file").write_text("not a directory")

    spec = {"name": "s", "checkpoint": str(tiny_checkpoint), "task": "sst2", "data": str(tiny_glue), "archs": ["bert"],
            "recipes": [str(root / "no-such-recipe.yaml")], "sparsities": [0.5], "seeds": [0]}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    return root


FAST = ["--epochs", "1", "--max-train-samples", "16"]

# (name, command with {ws} = workspace, {ckpt} = tiny checkpoint, {glue} = tiny GLUE dir; words the error names)
MISTAKES = [
    ("malformed YAML", "prune {ckpt} --recipe {ws}/broken.yaml --data {glue}", ["broken.yaml"]),
    ("unknown recipe key", "prune {ckpt} --recipe {ws}/unknown-key.yaml --data {glue}", ["colour", "unknown key"]),
    ("sparsity 1.0", "prune {ckpt} --recipe sst2-magnitude --target-sparsity 1.0 --data {glue}", ["target_sparsity"]),
    ("negative sparsity", "prune {ckpt} --recipe {ws}/negative.yaml --data {glue}", ["negative.yaml", "target_sparsity"]),
    ("schedule end before start", "prune {ckpt} --recipe {ws}/backwards.yaml --data {glue}", ["backwards.yaml", "end"]),
    ("unknown pruner", "prune {ckpt} --recipe {ws}/unknown-pruner.yaml --data {glue}", ["telepathy"]),
    ("unknown recipe name", "prune {ckpt} --recipe sst2-nonexistent --data {glue}", ["sst2-nonexistent"]),
    ("unknown task", "prune {ckpt} --recipe sst2-magnitude --task foo --data {glue}", ["unknown GLUE task 'foo'"]),
    ("missing data dir", "finetune --model {ckpt} --data {ws}/no-such-dir", ["no-such-dir"]),
    ("TSV without label column", "prune {ckpt} --recipe sst2-magnitude --data {ws}/glue-no-label", ["train.tsv", "'label'"]),
    ("empty data file", "finetune --model {ckpt} --data {ws}/glue-empty", ["train.tsv", "empty"]),
    ("checkpoint dir that is no model", "prune {ws}/not-a-model --recipe sst2-magnitude --data {glue}", ["not a model directory"]),
    ("truncated safetensors", "finetune --model {ws}/truncated --data {glue}", ["truncated", "cannot load"]),
    ("weights narrower than the config", "finetune --model {ws}/wider-config --data {glue}", ["wider-config", "intermediate.dense"]),
    ("fewer layers than the config", "prune {ws}/deeper-config --recipe sst2-magnitude --data {glue}", ["deeper-config", "missing"]),
    ("BERMo checkpoint as BERT", "prune {ws}/bermo --arch bert --recipe sst2-magnitude --data {glue}", ["BERMo checkpoint"]),
    ("BERMo checkpoint evaluated as BERT", "evaluate {ws}/bermo --arch bert --data {glue}", ["BERMo checkpoint", "not BERT"]),
    ("BERT checkpoint evaluated as BERMo", "evaluate {ckpt} --arch bermo --data {glue}", ["BERT checkpoint", "not BERMo"]),
    ("checkpoint for another label count", "evaluate {ws}/three-labels --data {glue}", ["3-label head", "sst2 needs 2"]),
    ("output dir with results", "prune {ckpt} --recipe sst2-magnitude --data {glue} --out {ws}/finished", ["already exists", "--overwrite"]),
    ("unwritable output dir", "prune {ckpt} --recipe sst2-magnitude --data {glue} --out {ws}/a-file/out", ["cannot write"]),
    ("resume of a finished run", "prune {ckpt} --recipe sst2-magnitude --data {glue} --out {ws}/finished --resume", ["nothing to resume"]),
    ("learning rate not a number", "finetune --model {ckpt} --data {glue} --lr nan", ["'nan' is not a finite number above 0"]),
    ("seed out of range", "prune {ckpt} --recipe sst2-magnitude --data {glue} --seed -1", ["--seed", "-1"]),
    ("infinite learning rate in a recipe", "prune {ckpt} --recipe {ws}/infinite-lr.yaml --data {glue}",
     ["infinite-lr.yaml", "learning_rate"]),
    ("pruner option not a number", "prune {ckpt} --recipe {ws}/nan-option.yaml --data {glue}", ["nan-option.yaml", "init_score"]),
    ("soft movement lambda above its cap", "prune {ckpt} --recipe {ws}/lambda-above-cap.yaml --data {glue}",
     ["initial_lambda 20000.0 is above max_lambda 10000.0"]),
    ("sweep spec naming a missing recipe", "bench {ws}/spec.yaml --out {ws}/bench-out", ["no-such-recipe"]),
    ("bad shard", "bench {ws}/spec.yaml --out {ws}/bench-out --shard 3/2", ["3/2"]),
]


# Mistakes that click catches while parsing: its error line comes with a usage hint.
CLICK_CHECKED = ("missing data dir", "learning rate not a number", "seed out of range")


@pytest.mark.parametrize("name,command,words", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistake_is_one_line_exit_2_and_leaves_nothing(workspace, tiny_checkpoint, tiny_glue, tmp_path, name, command, words):
    args = command.format(ws=workspace, ckpt=tiny_checkpoint, glue=tiny_glue).split()
    if "--out" not in args and args[0] != "evaluate":
        args += ["--out", str(tmp_path / "out")]
    if args[0] in ("prune", "finetune"):
        args += FAST
    before = sorted(p.relative_to(workspace) for p in workspace.rglob("*"))
    result = run(*args)
    assert_user_error(result, *words, usage=name in CLICK_CHECKED)
    assert sorted(p.relative_to(workspace) for p in workspace.rglob("*")) == before  # nothing written or removed
    assert not any(tmp_path.iterdir()), "partial output left behind"


def test_the_matrix_covers_at_least_fifteen_mistakes():
    assert len(MISTAKES) >= 15


def test_a_plot_in_a_format_matplotlib_cannot_write_is_refused(tmp_path):
    result = run("recipe", "plot", "sst2-magnitude", "-o", tmp_path / "plot.txt")
    assert_user_error(result, "cannot write", "plot.txt")
    assert not any(tmp_path.iterdir())


def test_an_output_dir_holding_the_current_dir_is_refused(tiny_checkpoint, tiny_glue, tmp_path, monkeypatch):
    """The output dir is replaced whole when a run ends: '.', 'x/..' or a dir above the current one
    would have been deleted with everything in it (the finished run included)."""
    here = tmp_path / "here"
    (here / "keep").mkdir(parents=True)
    (here / "keep" / "notes.txt").write_text("mine")
    monkeypatch.chdir(here / "keep")
    for out in (".", "..", "sub/..", str(here)):
        result = run("prune", tiny_checkpoint, "--recipe", "sst2-magnitude", "--data", tiny_glue, *FAST, "--out", out)
        assert_user_error(result, f"--out {out}")
    assert sorted(p.relative_to(here).as_posix() for p in here.rglob("*")) == ["keep", "keep/notes.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only dir")
def test_read_only_parent_dir(tiny_checkpoint, tiny_glue, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = run("prune", tiny_checkpoint, "--recipe", "sst2-magnitude", "--data", tiny_glue, *FAST, "--out", locked / "out")
        assert_user_error(result, "cannot write")
        assert not any(locked.iterdir())
    finally:
        locked.chmod(0o755)


# --- tokenizers that do not fit the model -----------------------------------------------------


@pytest.fixture(scope="module")
def bad_tokenizers(tmp_path_factory, tiny_checkpoint) -> dict[str, Path]:
    """A checkpoint whose tokenizer files were deleted, and one with a foreign 5-token vocabulary:
    transformers would load either without complaint and turn every word into [UNK]."""
    root = tmp_path_factory.mktemp("tokenizers")
    missing = root / "no-tokenizer"
    shutil.copytree(tiny_checkpoint, missing)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (missing / name).unlink(missing_ok=True)
    foreign = root / "foreign-tokenizer"
    shutil.copytree(missing, foreign)
    (foreign / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    return {"missing": missing, "foreign": foreign}


@pytest.mark.parametrize("kind", ["missing", "foreign"])
@pytest.mark.parametrize("command", ["evaluate", "prune", "inspect"])
def test_a_tokenizer_that_does_not_fit_the_model_is_refused(bad_tokenizers, tiny_glue, tmp_path, kind, command):
    checkpoint = bad_tokenizers[kind]
    args = {
        "evaluate": ("evaluate", checkpoint, "--task", "sst2", "--data", tiny_glue),
        "prune": ("prune", checkpoint, "--recipe", RECIPES / "sst2-magnitude.yaml", "--task", "sst2", "--data",
                  tiny_glue, "--out", tmp_path / "out", "--epochs", "1", "--max-train-samples", "16"),
        "inspect": ("inspect", checkpoint),
    }[command]
    assert_user_error(run(*args), "tokenizer")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_a_target_that_a_structured_recipe_would_ignore_is_refused(tiny_checkpoint, tiny_glue, tmp_path):
    structured = RECIPES / "sst2-structured-magnitude.yaml"
    result = run("prune", tiny_checkpoint, "--recipe", structured, "--task", "sst2", "--data", tiny_glue,
                 "--out", tmp_path / "out", "--target-sparsity", "0.9", "--epochs", "1", "--max-train-samples", "16")
    assert_user_error(result, "would be ignored")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "s", "checkpoint": str(tiny_checkpoint), "data": str(tiny_glue),
                                    "recipes": [str(structured)], "sparsities": [0.9]}))
    assert_user_error(run("bench", spec, "--out", tmp_path / "sweep"), "would be ignored")


def test_a_structured_recipe_at_its_own_target_is_accepted():
    from bermo_prune.recipes import load_recipe

    structured = RECIPES / "sst2-structured-magnitude.yaml"
    assert load_recipe(structured, {"target_sparsity": 0.75}).target_sparsity == 0.75
    assert load_recipe(RECIPES / "sst2-magnitude.yaml", {"target_sparsity": 0.5}).target_sparsity == 0.5
