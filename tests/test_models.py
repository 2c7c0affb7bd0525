"""BERMo model, conversion from BERT checkpoints, save/reload through the Auto classes, and
checkpoint loading errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertModel

import bermo_prune  # noqa: F401  (registers BERMo with the Auto classes)
from bermo_prune.errors import BermoPruneError
from bermo_prune.models import BermoConfig, BermoForSequenceClassification, load_classifier

from conftest import minilm_path, tiny_config


def bermo(**options) -> BermoForSequenceClassification:
    torch.manual_seed(0)
    return BermoForSequenceClassification(BermoConfig.from_bert_config(tiny_config(), **options))


def batch(size: int = 3, length: int = 7, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1000, 2000, (size, length), generator=g)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


# --- BermoForSequenceClassification ----------------------------------------------------------


@pytest.mark.parametrize("num_labels", [2, 1])
def test_logits_shape(num_labels):
    model = bermo(num_labels=num_labels).eval()
    assert model.config.num_labels == num_labels
    with torch.no_grad():
        logits = model(**batch(size=3)).logits
    assert logits.shape == (3, num_labels)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("num_labels", [2, 1])
def test_loss_matches_label_count(num_labels):
    model = bermo(num_labels=num_labels)
    labels = torch.tensor([0, 1, 1]) if num_labels == 2 else torch.tensor([0.5, 2.0, 1.0])
    out = model(**batch(size=3), labels=labels)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)


def test_mix_is_uniform_and_gamma_one_at_init():
    model = bermo()
    weights = model.scalar_mix.weights()
    n = tiny_config().num_hidden_layers + 1
    assert weights.shape == (n,)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(weights, torch.full((n,), 1.0 / n))
    assert model.layer_weights() == pytest.approx([1.0 / n] * n)
    assert model.scalar_mix.gamma.item() == 1.0


def test_mix_weights_sum_to_one_for_any_logits():
    model = bermo()
    with torch.no_grad():
        model.scalar_mix.mix_logits.copy_(torch.tensor([3.0, -1.0, 0.5]))
    weights = model.scalar_mix.weights()
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert weights.argmax().item() == 0


def test_mix_and_gamma_receive_gradients():
    model = bermo()
    out = model(**batch(), labels=torch.tensor([0, 1, 1]))
    out.loss.backward()
    mix_grad = model.scalar_mix.mix_logits.grad
    gamma_grad = model.scalar_mix.gamma.grad
    assert mix_grad is not None and gamma_grad is not None
    assert mix_grad.abs().sum() > 0
    assert gamma_grad.abs() > 0


def test_mix_without_embeddings_has_one_weight_per_layer():
    with_emb = bermo()
    without = bermo(bermo_mix_embeddings=False)
    layers = tiny_config().num_hidden_layers
    assert without.scalar_mix.weights().shape == (layers,)
    assert with_emb.scalar_mix.weights().shape == (layers + 1,)
    with torch.no_grad():
        logits = without.eval()(**batch()).logits
    assert logits.shape == (3, 2)


def test_mix_of_embeddings_only_reads_the_embedding_output():
    """With all mix weight on state 0 and gamma 1, the mixed sequence is the embedding output."""
    model = bermo().eval()
    with torch.no_grad():
        model.scalar_mix.mix_logits.copy_(torch.tensor([100.0, -100.0, -100.0]))
        inputs = batch()
        states = model.bert(**inputs, output_hidden_states=True).hidden_states
        expected = model.classifier(model.bert.pooler(states[0]))
        assert torch.allclose(model(**inputs).logits, expected, atol=1e-5)


def test_mean_pooling_ignores_padding():
    model = bermo(bermo_pooling="mean").eval()
    g = torch.Generator().manual_seed(3)
    short = torch.randint(1000, 2000, (1, 4), generator=g)
    long = torch.randint(1000, 2000, (1, 9), generator=g)
    padded = torch.cat([short, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    both = torch.cat([padded, long])
    mask = torch.tensor([[1] * 4 + [0] * 5, [1] * 9])
    with torch.no_grad():
        alone = model(input_ids=short, attention_mask=torch.ones_like(short)).logits
        in_batch = model(input_ids=both, attention_mask=mask).logits
        # without the mask the padding is read as tokens: the check above is not vacuous
        unmasked = model(input_ids=padded, attention_mask=torch.ones_like(padded)).logits
    assert torch.allclose(alone[0], in_batch[0], atol=1e-5)
    assert not torch.allclose(alone[0], unmasked[0], atol=1e-5)


def test_cls_and_mean_pooling_differ():
    inputs = batch()
    with torch.no_grad():
        cls = bermo().eval()(**inputs).logits
        mean = bermo(bermo_pooling="mean").eval()(**inputs).logits
    assert not torch.allclose(cls, mean)


def test_invalid_pooling_raises():
    with pytest.raises(ValueError, match="bermo_pooling"):
        BermoConfig.from_bert_config(tiny_config(), bermo_pooling="max")
    with pytest.raises(ValueError, match="bermo_pooling"):
        BermoConfig(bermo_pooling="first")


# --- load_classifier -------------------------------------------------------------------------


def test_bert_and_bermo_share_encoder_weights(tiny_checkpoint):
    bert, _ = load_classifier(tiny_checkpoint, "bert")
    bermo_model, tokenizer = load_classifier(tiny_checkpoint, "bermo")
    assert type(bert).__name__ == "BertForSequenceClassification"
    assert isinstance(bermo_model, BermoForSequenceClassification)
    assert tokenizer is not None
    a = {k: v for k, v in bert.state_dict().items() if k.startswith("bert.")}
    b = {k: v for k, v in bermo_model.state_dict().items() if k.startswith("bert.")}
    assert a.keys() == b.keys()
    assert any(".encoder." in k for k in a) and any(".embeddings." in k for k in a)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []
    # and both equal the checkpoint itself (no re-initialisation of loaded weights)
    saved = BertModel.from_pretrained(tiny_checkpoint).state_dict()
    for key, value in saved.items():
        if f"bert.{key}" in a:
            assert torch.equal(a[f"bert.{key}"], value), key


def test_conversion_starts_with_uniform_mix(tiny_checkpoint):
    model, _ = load_classifier(tiny_checkpoint, "bermo")
    n = tiny_config().num_hidden_layers + 1
    assert model.layer_weights() == pytest.approx([1.0 / n] * n)
    assert model.scalar_mix.gamma.item() == 1.0


def test_conversion_passes_bermo_options_and_num_labels(tiny_checkpoint):
    model, _ = load_classifier(tiny_checkpoint, "bermo", num_labels=1, bermo_mix_embeddings=False, bermo_pooling="mean")
    assert model.config.num_labels == 1
    assert model.classifier.out_features == 1
    assert model.config.bermo_pooling == "mean"
    assert model.scalar_mix.weights().shape == (tiny_config().num_hidden_layers,)


def test_save_and_reload_through_auto_class(tmp_path):
    model = bermo().eval()
    with torch.no_grad():  # a trained-looking mix, so a reload that resets it would be noticed
        model.scalar_mix.mix_logits.copy_(torch.tensor([0.3, -0.2, 1.1]))
        model.scalar_mix.gamma.fill_(1.7)
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert "model.safetensors" in files
    assert not any(name.endswith(".bin") for name in files)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "bermo"

    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is BermoForSequenceClassification
    assert torch.equal(reloaded.scalar_mix.mix_logits, model.scalar_mix.mix_logits)
    assert reloaded.scalar_mix.gamma.item() == pytest.approx(1.7)
    inputs = batch()
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reloaded(**inputs).logits)


def test_options_survive_save_and_reload(tmp_path):
    model = bermo(bermo_mix_embeddings=False, bermo_pooling="mean", bermo_layer_norm=True)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert reloaded.config.bermo_mix_embeddings is False
    assert reloaded.config.bermo_pooling == "mean"
    assert reloaded.config.bermo_layer_norm is True
    assert reloaded.scalar_mix.num_states == tiny_config().num_hidden_layers


@pytest.fixture
def bermo_checkpoint(tmp_path, tokenizer):
    path = tmp_path / "bermo-ckpt"
    bermo().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_bermo_checkpoint_loads_natively(bermo_checkpoint):
    model, _ = load_classifier(bermo_checkpoint, None)
    assert isinstance(model, BermoForSequenceClassification)
    model, _ = load_classifier(bermo_checkpoint, "bermo")
    assert isinstance(model, BermoForSequenceClassification)


def test_bermo_checkpoint_as_bert_is_refused(bermo_checkpoint):
    with pytest.raises(BermoPruneError, match="BERMo"):
        load_classifier(bermo_checkpoint, "bert")


def test_unknown_arch_is_refused(tiny_checkpoint):
    with pytest.raises(BermoPruneError, match="unknown arch"):
        load_classifier(tiny_checkpoint, "gpt")


def test_directory_without_config_is_refused(tmp_path):
    (tmp_path / "weights.txt").write_text("not a model")
    with pytest.raises(BermoPruneError, match="config.json"):
        load_classifier(tmp_path, "bert")


def test_non_bert_model_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(BermoPruneError, match="gpt2"):
        load_classifier(tmp_path, "bert")


def test_invalid_config_json_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(BermoPruneError, match="not valid JSON"):
        load_classifier(tmp_path, "bert")


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(BermoPruneError, match="no such model directory"):
        load_classifier(tmp_path / "nowhere", "bert")


# --- the real checkpoint ---------------------------------------------------------------------


@pytest.mark.minilm
def test_minilm_as_bermo_forward():
    model, tokenizer = load_classifier("minilm-l6", "bermo")
    assert model.config.num_hidden_layers == 6
    assert model.scalar_mix.weights().shape == (7,)
    assert model.scalar_mix.weights().sum().item() == pytest.approx(1.0, abs=1e-6)
    enc = tokenizer(["a gripping, beautifully made film", "dull"], padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (2, 2)
    assert torch.isfinite(logits).all()
    assert not math.isnan(float(logits.sum()))
    # the encoder holds the checkpoint's weights, not a fresh initialisation
    from safetensors.torch import load_file

    saved = load_file(str(minilm_path() / "model.safetensors"))
    state = model.state_dict()
    compared = 0
    for key, value in saved.items():
        if f"bert.{key}" in state and "position_ids" not in key:
            assert torch.equal(state[f"bert.{key}"], value), key
            compared += 1
    assert compared >= 100


@pytest.mark.parametrize("arch", ["bert", "bermo"])
def test_a_half_precision_checkpoint_loads_in_float32_and_prunes(tmp_path, tiny_checkpoint, arch):
    half = tmp_path / "half"
    model, tokenizer = load_classifier(tiny_checkpoint, "bert")
    model.to(torch.float16).save_pretrained(half)
    tokenizer.save_pretrained(half)
    loaded, _ = load_classifier(half, arch)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}

    from bermo_prune.pruning.registry import get_pruner_class
    from bermo_prune.recipes import load_recipe, resolve_recipe

    pruner = get_pruner_class("magnitude")(load_recipe(resolve_recipe("sst2-magnitude")))
    pruner.attach(loaded, total_steps=10)
    logits = loaded(input_ids=torch.tensor([[101, 2023, 102]])).logits  # float32 masks on float32 weights
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_bermo_returns_a_tuple_when_asked():
    import torch

    from bermo_prune.models import BermoConfig, BermoForSequenceClassification
    from conftest import tiny_config

    torch.manual_seed(0)
    model = BermoForSequenceClassification(BermoConfig.from_bert_config(tiny_config(), num_labels=2)).eval()
    ids = torch.randint(1000, 2000, (2, 7))
    labels = torch.tensor([0, 1])
    as_dict = model(input_ids=ids, labels=labels)
    loss, logits = model(input_ids=ids, labels=labels, return_dict=False)[:2]
    assert torch.equal(logits, as_dict.logits) and torch.equal(loss, as_dict.loss)
    assert torch.equal(model(input_ids=ids, return_dict=False)[0], as_dict.logits)
