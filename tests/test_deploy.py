"""ONNX export and runtime on tiny models: ONNX Runtime's logits equal PyTorch's for BERT, BERMo and
a compacted BERT (dynamic batch and length); INT8 exports load and predict; broken or mismatched
export folders are one-line errors; `predict` and `evaluate` read a checkpoint and its export alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import BertForSequenceClassification

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

from bermo_prune.cli import main  # noqa: E402
from bermo_prune.deploy import FP32_TOLERANCE, MODEL_FILE, attention_heads, export_onnx, load_onnx  # noqa: E402
from bermo_prune.models import BermoConfig, BermoForSequenceClassification  # noqa: E402
from bermo_prune.models.compact_shapes import CompactBertConfig, CompactBertForSequenceClassification  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402

SENTENCES = ["a warm, funny and clever film", "dull", "the acting is fine but the story goes nowhere at all"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def save(model, tokenizer, path: Path) -> Path:
    torch.manual_seed(0)
    with torch.no_grad():  # a head far from zero, so that the logits (and their differences) are not tiny
        model.classifier.weight.normal_(0, 1.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_classifier(kind: str):
    torch.manual_seed(0)
    if kind == "bert":
        return BertForSequenceClassification(tiny_config(num_labels=2))
    if kind == "bermo":
        return BermoForSequenceClassification(BermoConfig.from_bert_config(tiny_config(num_labels=2)))
    # compacted: layer 0 lost every head and half its neurons, layer 1 three heads
    config = CompactBertConfig(layer_num_heads=[0, 1], layer_intermediate_sizes=[32, 64], **tiny_config(num_labels=2).to_dict())
    return CompactBertForSequenceClassification(config)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer):
    """{kind: (checkpoint, fp32 export)} for BERT, BERMo and a compacted BERT."""
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for kind in ("bert", "bermo", "compact"):
        checkpoint = save(tiny_classifier(kind), tokenizer, root / kind)
        export_onnx(checkpoint, root / f"{kind}-onnx")
        out[kind] = (checkpoint, root / f"{kind}-onnx")
    return out


@pytest.mark.parametrize("kind", ["bert", "bermo", "compact"])
def test_onnx_logits_equal_pytorch_on_other_batch_and_length(kind, exported, tokenizer):
    checkpoint, export = exported[kind]
    reference = (BermoForSequenceClassification if kind == "bermo" else
                 CompactBertForSequenceClassification if kind == "compact" else
                 BertForSequenceClassification).from_pretrained(checkpoint).eval()
    manifest = json.loads((export / "onnx_manifest.json").read_text())
    assert manifest["precision"] == "fp32" and manifest["check"]["passed"] and manifest["fused_ops"] is None
    assert manifest["check"]["max_abs_diff"] <= FP32_TOLERANCE
    assert_matches_pytorch(reference, export, FP32_TOLERANCE)
    assert load_onnx(export)[1].get_vocab() == tokenizer.get_vocab()


def assert_matches_pytorch(reference, export: Path, tolerance: float) -> None:
    onnx_model, onnx_tokenizer = load_onnx(export)
    for texts in (SENTENCES, SENTENCES[:1], SENTENCES * 3):  # batch 3, 1, 9: not the export's batch of 4
        batch = onnx_tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            expected = reference(**batch).logits
        got = onnx_model(**batch).logits
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=tolerance, rtol=0)


def test_fused_export_has_one_attention_per_layer_with_that_layers_heads(tmp_path, tokenizer):
    # heads 3, 0 and 1 of 4: the optimizer's one model-wide head count (4) is wrong for every layer
    config = CompactBertConfig(layer_num_heads=[3, 0, 1], layer_intermediate_sizes=[32, 64, 16],
                               **tiny_config(num_labels=2, num_hidden_layers=3).to_dict())
    torch.manual_seed(0)
    checkpoint = save(CompactBertForSequenceClassification(config), tokenizer, tmp_path / "compact")
    manifest = export_onnx(checkpoint, tmp_path / "fused", fuse=True)
    assert manifest["check"]["passed"]
    assert manifest["fused_ops"]["Attention"] == 2 and manifest["fused_ops"]["SkipLayerNormalization"] >= 4
    assert attention_heads(tmp_path / "fused" / MODEL_FILE) == [3, 1]
    reference = CompactBertForSequenceClassification.from_pretrained(checkpoint).eval()
    assert_matches_pytorch(reference, tmp_path / "fused", FP32_TOLERANCE)


@pytest.mark.parametrize("kind", ["bert", "bermo"])
def test_fused_export_matches_pytorch(kind, exported, tmp_path):
    checkpoint, _ = exported[kind]
    manifest = export_onnx(checkpoint, tmp_path / "fused", fuse=True)
    assert manifest["fused_ops"]["Attention"] == 2 and manifest["fused_ops"]["EmbedLayerNormalization"] == 1
    assert attention_heads(tmp_path / "fused" / MODEL_FILE) == [4, 4]
    reference = (BermoForSequenceClassification if kind == "bermo" else BertForSequenceClassification)
    assert_matches_pytorch(reference.from_pretrained(checkpoint).eval(), tmp_path / "fused", FP32_TOLERANCE)


def test_fused_int8_export_quantises_the_fused_attention(exported, tmp_path):
    checkpoint, _ = exported["bert"]
    out = tmp_path / "fused-int8"
    result = run("export", checkpoint, "--format", "onnx", "--quantize", "int8", "--fuse", "--out", out)
    assert result.exit_code == 0, result.output
    assert "fused: 1 EmbedLayerNormalization, 2 Attention" in " ".join(result.output.split())
    assert attention_heads(out / MODEL_FILE) == [4, 4]
    graph_ops = {node.op_type for node in __import__("onnx").load(out / MODEL_FILE).graph.node}
    assert {"QAttention", "MatMulInteger"} <= graph_ops and "Attention" not in graph_ops
    predicted = run("predict", out, *SENTENCES, "--json")
    assert predicted.exit_code == 0, predicted.output
    assert len(json.loads(predicted.output)) == len(SENTENCES)


def test_int8_export_loads_and_predicts(exported, tmp_path):
    checkpoint, _ = exported["bert"]
    out = tmp_path / "int8"
    result = run("export", checkpoint, "--format", "onnx", "--quantize", "int8", "--out", out)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "onnx_manifest.json").read_text())
    assert manifest["precision"] == "int8" and manifest["check"]["passed"]
    assert not (out / "model.fp32.onnx").exists()
    graph_ops = {node.op_type for node in __import__("onnx").load(out / MODEL_FILE).graph.node}
    assert graph_ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}  # really quantised
    predicted = run("predict", out, *SENTENCES, "--json")
    assert predicted.exit_code == 0, predicted.output
    rows = json.loads(predicted.output)
    assert [r["text"] for r in rows] == SENTENCES
    assert all(0.5 <= r["probability"] <= 1 and abs(sum(r["probabilities"]) - 1) < 1e-5 for r in rows)


@pytest.mark.parametrize("kind", ["bert", "compact"])
def test_predict_agrees_on_checkpoint_and_export(kind, exported):
    checkpoint, export = exported[kind]
    from_torch = json.loads(run("predict", checkpoint, *SENTENCES, "--json").output)
    from_onnx = json.loads(run("predict", export, *SENTENCES, "--json").output)
    assert [r["label"] for r in from_torch] == [r["label"] for r in from_onnx]
    for a, b in zip(from_torch, from_onnx):
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)
    table = run("predict", export, SENTENCES[0])
    assert table.exit_code == 0 and "LABEL_" in table.output


def test_evaluate_reads_an_export(exported, tiny_glue):
    checkpoint, export = exported["bert"]
    from_torch = json.loads(run("evaluate", checkpoint, "--task", "sst2", "--data", tiny_glue, "--json").output)
    from_onnx = json.loads(run("evaluate", export, "--task", "sst2", "--data", tiny_glue, "--json").output)
    assert from_onnx["runtime"] == "onnxruntime" and from_onnx["precision"] == "fp32"
    assert from_onnx["examples"] == from_torch["examples"] == 32
    assert from_onnx["accuracy"] == from_torch["accuracy"]


def assert_user_error(result, fragment: str):
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def copy_export(source: Path, target: Path) -> Path:
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def test_corrupt_or_mismatched_export_is_a_one_line_error(exported, tmp_path):
    _, export = exported["bert"]
    corrupt = copy_export(export, tmp_path / "corrupt")
    data = (corrupt / MODEL_FILE).read_bytes()
    (corrupt / MODEL_FILE).write_bytes(data[: len(data) // 2])
    assert_user_error(run("predict", corrupt, "x"), "does not match its manifest's sha256")

    no_model = copy_export(export, tmp_path / "no-model")
    (no_model / MODEL_FILE).unlink()
    assert_user_error(run("evaluate", no_model, "--task", "sst2"), "model.onnx is missing")

    bad_manifest = copy_export(export, tmp_path / "bad-manifest")
    (bad_manifest / "onnx_manifest.json").write_text("{not json")
    assert_user_error(run("predict", bad_manifest, "x"), "unreadable onnx_manifest.json")

    other_labels = copy_export(export, tmp_path / "three-labels")  # config.json of another head
    config = json.loads((other_labels / "config.json").read_text())
    config["id2label"] = {str(i): f"L{i}" for i in range(3)}
    config["label2id"] = {f"L{i}": i for i in range(3)}
    (other_labels / "config.json").write_text(json.dumps(config))
    assert_user_error(run("predict", other_labels, "x"), "2 outputs but config.json 3 labels")

    assert_user_error(run("inspect", export), "is an ONNX export")
    assert_user_error(run("export", exported["bert"][0], "--format", "sparse", "--quantize", "int8", "--out",
                          tmp_path / "never"), "--quantize needs --format onnx")
    assert not (tmp_path / "never").exists()


def test_predict_evaluate_and_export_refuse_a_checkpoint_without_a_trained_head(tiny_checkpoint, tiny_glue, tmp_path):
    assert_user_error(run("predict", tiny_checkpoint, "x"), "no trained classifier head (architectures: BertModel)")
    assert_user_error(run("evaluate", tiny_checkpoint, "--task", "sst2", "--data", tiny_glue), "no trained classifier head")
    assert_user_error(run("export", tiny_checkpoint, "--format", "onnx", "--out", tmp_path / "x"), "no trained classifier head")
    assert not (tmp_path / "x").exists()


def test_predict_sentence_pairs_and_regression(tmp_path, tokenizer):
    torch.manual_seed(0)
    checkpoint = save(BertForSequenceClassification(tiny_config(num_labels=1)), tokenizer, tmp_path / "stsb")
    rows = json.loads(run("predict", checkpoint, "a man is playing\ta man plays", "a dog runs\ta cat sleeps", "--json").output)
    assert [set(r) for r in rows] == [{"text", "score"}] * 2
    assert rows[0]["score"] != rows[1]["score"]
    assert_user_error(run("predict", checkpoint, "a pair\tof texts", "a single text"), "every text is a sentence pair")
