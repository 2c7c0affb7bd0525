"""Sparse export: bit-exact round trip, size ~ (1 - s) of dense, loading BERT / BERMo / compacted
BERT from an export, and corrupted or mismatched exports as one-line user errors (exit code 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from transformers import BertForSequenceClassification

import bermo_prune  # noqa: F401  (registers BERMo and compacted BERT with the Auto classes)
from bermo_prune import export
from bermo_prune.cli import main
from bermo_prune.compact import compact
from bermo_prune.errors import BermoPruneError
from bermo_prune.models import BermoConfig, BermoForSequenceClassification
from bermo_prune.models.compact_shapes import CompactBertForSequenceClassification
from bermo_prune.pruning.registry import get_pruner_class
from bermo_prune.recipes import Recipe

from conftest import tiny_config

SPARSITY = 0.9


def one_shot(model, pruner: str = "magnitude", sparsity: float = SPARSITY, **options):
    """Prune before any training (one-shot schedule at step 0) and finalise: real zeros."""
    r = Recipe.model_validate({"name": "oneshot", "pruner": {"name": pruner, "options": options},
                               "target_sparsity": sparsity, "schedule": {"shape": "one_shot", "start": 0.0, "end": 0.0}})
    p = get_pruner_class(pruner)(r)
    p.attach(model, 10)
    p.finalize()
    return model.eval(), [f"{name}.weight" for name in p.modules]


@pytest.fixture(scope="module")
def pruned_checkpoint(tmp_path_factory, tokenizer) -> tuple[Path, list[str]]:
    """A BERT classifier at 90% unstructured sparsity, with a -0.0, a NaN and an inf planted."""
    path = tmp_path_factory.mktemp("pruned-bert")
    torch.manual_seed(0)
    model, targeted = one_shot(BertForSequenceClassification(tiny_config(num_labels=2)))
    with torch.no_grad():
        model.bert.encoder.layer[0].output.dense.weight[0, :3] = torch.tensor([-0.0, float("nan"), float("inf")])
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, targeted


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        a, b = a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)
    return torch.equal(a, b)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def assert_user_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[0]


# --- encoding --------------------------------------------------------------------------------


def test_encode_decode_is_bit_exact_for_every_dtype():
    torch.manual_seed(0)
    weight = torch.randn(37, 29)
    weight[torch.rand_like(weight) < 0.9] = 0.0
    weight[0, :4] = torch.tensor([-0.0, float("nan"), float("-inf"), 0.0])
    tensors = {
        "float32": weight,
        "float16": weight.half(),
        "bfloat16": weight.bfloat16(),
        "float64": weight.double(),
        "all_negative_zero": torch.full((64,), -0.0),
        "dense_vector": torch.randn(5),
        "int": torch.arange(12).reshape(3, 4),
        "bool": torch.rand(9) > 0.5,
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(3.5),
    }
    for name, tensor in tensors.items():
        entry, payload = export.encode(name, tensor)
        assert same_bits(export.decode(name, entry, payload), tensor), name
    assert export.encode("w", weight)[0]["encoding"] == "bitmask"
    assert export.encode("v", tensors["dense_vector"])[0]["encoding"] == "dense"
    assert export.encode("i", tensors["int"])[0]["encoding"] == "dense"


def test_sparse_export_round_trip_is_lossless(pruned_checkpoint, tmp_path):
    source, _ = pruned_checkpoint
    manifest = export.export_sparse(source, tmp_path / "sparse")
    assert {p.name for p in (tmp_path / "sparse").iterdir()} >= {export.MANIFEST, export.PAYLOAD, "config.json"}
    assert manifest["payload"]["sha256"] == export.sha256(tmp_path / "sparse" / export.PAYLOAD)
    original = load_file(source / "model.safetensors")
    rebuilt = export.import_sparse(tmp_path / "sparse")
    assert rebuilt.keys() == original.keys()
    for name in original:
        assert same_bits(rebuilt[name], original[name]), name

    result = run("export", tmp_path / "sparse", "--format", "dense", "--out", tmp_path / "dense")
    assert result.exit_code == 0, result.output
    again = load_file(tmp_path / "dense" / "model.safetensors")
    assert all(same_bits(again[n], original[n]) for n in original)
    assert (tmp_path / "dense" / "config.json").read_bytes() == (source / "config.json").read_bytes()
    model, _ = bermo_prune.load_classifier(tmp_path / "dense", None, num_labels=None)  # a plain checkpoint again
    assert isinstance(model, BertForSequenceClassification)


def test_size_is_about_one_minus_sparsity(tmp_path):
    torch.manual_seed(0)
    model, targeted = one_shot(BertForSequenceClassification(tiny_config(num_labels=2)))
    model.save_pretrained(tmp_path / "ck")
    manifest = export.export_sparse(tmp_path / "ck", tmp_path / "sparse")
    sizes = export.size_summary(manifest, targeted)
    # values (1 - s) + the bitmask 1/32 + the signs of the zeros that masking left negative (<= s/32)
    assert 1 - SPARSITY < sizes["ratio"] <= (1 - SPARSITY) + 1 / 32 + SPARSITY / 32 + 0.005
    assert manifest["payload"]["bytes"] < manifest["dense_bytes"]  # embeddings stay dense, the rest shrinks

    with torch.no_grad():  # the same zeros without negative zeros: no sign bits at all
        for name, param in model.named_parameters():
            param.add_(0.0)  # -0.0 + 0.0 = +0.0
    model.save_pretrained(tmp_path / "ck2")
    positive = export.size_summary(export.export_sparse(tmp_path / "ck2", tmp_path / "sparse2"), targeted)
    assert positive["ratio"] <= (1 - SPARSITY) + 1 / 32 + 0.002


@pytest.mark.parametrize("kind", ["bermo", "compact-bert"])
def test_load_sparse_rebuilds_the_model(kind, tmp_path):
    torch.manual_seed(0)
    if kind == "bermo":
        model, _ = one_shot(BermoForSequenceClassification(BermoConfig.from_bert_config(tiny_config(), num_labels=2)))
        expected_type = BermoForSequenceClassification
    else:
        model, _ = one_shot(BertForSequenceClassification(tiny_config(num_labels=2)), "head_neuron_magnitude", 0.5)
        model = compact(model).eval()
        expected_type = CompactBertForSequenceClassification
    model.save_pretrained(tmp_path / "ck")
    export.export_sparse(tmp_path / "ck", tmp_path / "sparse")
    loaded = export.load_sparse(tmp_path / "sparse").eval()
    assert type(loaded) is expected_type
    ids = torch.randint(1000, 3000, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


# --- corrupted and mismatched exports --------------------------------------------------------


@pytest.fixture
def sparse_dir(pruned_checkpoint, tmp_path) -> Path:
    out = tmp_path / "sparse"
    assert run("export", pruned_checkpoint[0], "--format", "sparse", "--out", out).exit_code == 0
    return out


def _edit_manifest(directory: Path, edit) -> None:
    path = directory / export.MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def _flip_byte(directory: Path) -> None:
    path = directory / export.PAYLOAD
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _replace_payload(directory: Path) -> None:
    """A well-formed payload with a tensor cut short, and a manifest checksum to match it."""
    payload = load_file(directory / export.PAYLOAD)
    name = next(k for k in payload if k.endswith("::values") and payload[k].numel() > 0)
    payload[name] = payload[name][:-1].clone()
    save_file(payload, directory / export.PAYLOAD)
    _edit_manifest(directory, lambda m: m["payload"].update(sha256=export.sha256(directory / export.PAYLOAD)))


def _shape(m):
    name = next(n for n, e in m["tensors"].items() if e["encoding"] == "bitmask")
    m["tensors"][name]["shape"] = [m["tensors"][name]["shape"][0] * 2, *m["tensors"][name]["shape"][1:]]


CORRUPTIONS = {
    "flipped payload byte": (_flip_byte, "sha256"),
    "missing payload": (lambda d: (d / export.PAYLOAD).unlink(), "missing"),
    "manifest not JSON": (lambda d: (d / export.MANIFEST).write_text("{not json"), "not valid JSON"),
    "no manifest": (lambda d: (d / export.MANIFEST).unlink(), "not a sparse export"),
    "other format version": (lambda d: _edit_manifest(d, lambda m: m.update(version=99)), "manifest"),
    "shape changed": (lambda d: _edit_manifest(d, _shape), "does not match"),
    "nnz changed": (lambda d: _edit_manifest(d, lambda m: next(e for e in m["tensors"].values() if e["encoding"] == "bitmask").update(nnz=1)), "does not match"),
    "tensor dropped from manifest": (lambda d: _edit_manifest(d, lambda m: m["tensors"].popitem()), "does not match"),
    "values cut short": (_replace_payload, "does not match"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupted_export_is_a_user_error(case, sparse_dir, tmp_path):
    corrupt, fragment = CORRUPTIONS[case]
    corrupt(sparse_dir)
    with pytest.raises(BermoPruneError, match=fragment):
        export.import_sparse(sparse_dir)
    out = tmp_path / "dense"
    assert_user_error(run("export", sparse_dir, "--format", "dense", "--out", out), fragment)
    assert not out.exists() and not list(tmp_path.glob(".dense.partial*"))


def test_export_user_mistakes(pruned_checkpoint, sparse_dir, tmp_path):
    assert_user_error(run("export", sparse_dir, "--out", tmp_path / "x"), "model.safetensors")  # already sparse
    assert_user_error(run("export", pruned_checkpoint[0], "--format", "dense", "--out", tmp_path / "y"), "not a sparse export")
    assert_user_error(run("export", tmp_path / "nope", "--out", tmp_path / "z"), "no such model directory")
    assert_user_error(run("export", pruned_checkpoint[0], "--out", sparse_dir), "--overwrite")
    assert run("export", pruned_checkpoint[0], "--out", sparse_dir, "--overwrite").exit_code == 0
