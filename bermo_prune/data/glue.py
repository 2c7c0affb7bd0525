"""GLUE tasks: load a split, subsample it, tokenise it for the HF Trainer, and score predictions.

Splits come from a folder in the original GLUE TSV layout (``DIR/SST-2/train.tsv``, plain or
gzipped), from the SST-2 copy bundled with the package, or from the hub dataset ``nyu-mll/glue``.
Every source yields the same columns: the task's text fields, ``label`` and ``idx``.
"""

from __future__ import annotations

import csv
import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from bermo_prune.errors import BermoPruneError

DATA_ENV = "BERMO_PRUNE_DATA"
HUB_DATASET = "nyu-mll/glue"
SPLITS = ("train", "dev")
BUNDLED_DIR = Path(__file__).parent / "bundled"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    dirname: str
    text_fields: tuple[str, ...]
    num_labels: int
    is_regression: bool
    main_metric: str
    hub_config: str
    train_examples: int  # rows of the GLUE train split: what a run without max_train_samples trains on


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("sst2", "SST-2", ("sentence",), 2, False, "accuracy", "sst2", 67_349),
        TaskSpec("cola", "CoLA", ("sentence",), 2, False, "matthews_correlation", "cola", 8_551),
        TaskSpec("mrpc", "MRPC", ("sentence1", "sentence2"), 2, False, "f1", "mrpc", 3_668),
        TaskSpec("rte", "RTE", ("sentence1", "sentence2"), 2, False, "accuracy", "rte", 2_490),
        TaskSpec("stsb", "STS-B", ("sentence1", "sentence2"), 1, True, "pearson", "stsb", 5_749),
    )
}


@dataclass(frozen=True)
class _Layout:
    """Where a task's fields sit in its GLUE TSV file."""

    columns: dict[str, str]  # our column -> the file's column
    header: tuple[str, ...] | None = None  # names to use when the file has no header row
    labels: dict[str, int] = field(default_factory=lambda: {"0": 0, "1": 1})


_LAYOUTS = {
    "sst2": _Layout({"sentence": "sentence", "label": "label"}),
    "cola": _Layout(
        {"sentence": "sentence", "label": "label"},
        header=("source", "label", "original_mark", "sentence"),
    ),
    "mrpc": _Layout({"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"}),
    # Same ids as the hub's glue/rte, so models trained on either source agree.
    "rte": _Layout(
        {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"},
        labels={"entailment": 0, "not_entailment": 1},
    ),
    "stsb": _Layout({"sentence1": "sentence1", "sentence2": "sentence2", "label": "score"}),
}


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def get_task(name: str) -> TaskSpec:
    spec = TASKS.get(_key(str(name)))
    if spec is None:
        raise BermoPruneError(f"unknown GLUE task {name!r}: choose one of {', '.join(TASKS)}")
    return spec


def _features(spec: TaskSpec) -> datasets.Features:
    return datasets.Features(
        {
            **{name: datasets.Value("string") for name in spec.text_fields},
            "label": datasets.Value("float32" if spec.is_regression else "int64"),
            "idx": datasets.Value("int64"),
        }
    )


def load_split(task: str, split: str, data_dir: str | os.PathLike | None = None) -> datasets.Dataset:
    spec = get_task(task)
    if split not in SPLITS:
        raise BermoPruneError(
            f"unknown split {split!r} for {spec.dirname}: choose train or dev (GLUE test labels are not public)"
        )
    source = data_source(task, data_dir)
    if source == HUB_DATASET:
        return _load_from_hub(spec, split)
    return _read_tsv(_find_file(BUNDLED_DIR if source == "bundled" else Path(source), spec, split), spec)


def data_source(task: str, data_dir: str | os.PathLike | None = None) -> str:
    """Where ``task``'s data is read from: ``data_dir``, else $BERMO_PRUNE_DATA, else the copy
    bundled with the package ('bundled'), else the hub (its dataset id). A run records it, so that
    a resumed run can tell when it would continue on other data."""
    if data_dir is None:
        data_dir = os.environ.get(DATA_ENV) or None
    if data_dir is not None:
        return str(Path(data_dir).expanduser().absolute())
    if (BUNDLED_DIR / get_task(task).dirname).is_dir():
        return "bundled"
    return HUB_DATASET


def _find_file(root: Path, spec: TaskSpec, split: str) -> Path:
    if not root.is_dir():
        raise BermoPruneError(f"GLUE data folder {root} does not exist or is not a folder")
    task_dir = root / spec.dirname
    if not task_dir.is_dir() and _key(root.name) == spec.name:
        task_dir = root  # the user pointed at the task folder itself
    if not task_dir.is_dir():
        raise BermoPruneError(f"{root} has no {spec.dirname} folder (expected {task_dir / split}.tsv)")
    for candidate in (task_dir / f"{split}.tsv", task_dir / f"{split}.tsv.gz"):
        if candidate.is_file():
            return candidate
    raise BermoPruneError(f"{task_dir} has no {split}.tsv or {split}.tsv.gz")


def _read_tsv(path: Path, spec: TaskSpec) -> datasets.Dataset:
    layout = _LAYOUTS[spec.name]
    columns: dict[str, list] = {name: [] for name in layout.columns}
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        # utf-8-sig drops the BOM that starts MRPC's header; QUOTE_NONE because sentences
        # contain bare quote characters that csv would otherwise treat as field delimiters.
        with opener(path, "rt", encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = layout.header or next(reader, None)
            if header is None:
                raise BermoPruneError(f"{path} is empty (expected a header row and {spec.dirname} examples)")
            missing = [theirs for theirs in layout.columns.values() if theirs not in header]
            if missing:
                raise BermoPruneError(
                    f"{path} has no column {missing[0]!r} needed for {spec.dirname} (header: {', '.join(header)})"
                )
            positions = {ours: header.index(theirs) for ours, theirs in layout.columns.items()}
            for row in reader:
                if not row:
                    continue
                # Every row of the GLUE files has the header's field count; skipping a row that
                # doesn't would silently change the split that results are compared on.
                if len(row) != len(header):
                    raise BermoPruneError(
                        f"{path} line {reader.line_num}: {len(row)} tab-separated fields, expected {len(header)}"
                    )
                values = {ours: row[i] for ours, i in positions.items()}
                values["label"] = _parse_label(values["label"], spec, layout, f"{path} line {reader.line_num}")
                for ours, value in values.items():
                    columns[ours].append(value)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as err:
        raise BermoPruneError(f"cannot read {path}: {err}") from err
    if not columns["label"]:
        raise BermoPruneError(f"{path} has no data rows")
    columns["idx"] = list(range(len(columns["label"])))
    return datasets.Dataset.from_dict(columns, features=_features(spec))


def _parse_label(value: str, spec: TaskSpec, layout: _Layout, where: str) -> int | float:
    try:
        return float(value) if spec.is_regression else layout.labels[value]
    except (KeyError, ValueError):
        expected = "a number" if spec.is_regression else f"one of {', '.join(layout.labels)}"
        raise BermoPruneError(f"{where}: {spec.dirname} label {value!r} is not {expected}") from None


def _load_from_hub(spec: TaskSpec, split: str) -> datasets.Dataset:
    try:
        ds = datasets.load_dataset(HUB_DATASET, spec.hub_config, split="validation" if split == "dev" else split)
    except Exception as err:  # offline, no cache, hub down: the remedy is the same in every case
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise BermoPruneError(
            f"GLUE {spec.dirname} is not bundled and could not be loaded from the hub ({reason}); "
            f"pass --data DIR with {spec.dirname}/{split}.tsv inside, or set {DATA_ENV}"
        ) from err
    # The hub stores labels as ClassLabel and idx as int32; cast so every source looks alike.
    return ds.select_columns([*spec.text_fields, "label", "idx"]).cast(_features(spec))


def subsample(ds: datasets.Dataset, n: int | None, seed: int) -> datasets.Dataset:
    if n is not None and n <= 0:
        raise BermoPruneError(f"cannot subsample to {n} examples: give a positive number, or none for all {len(ds)}")
    if n is None or n >= len(ds):
        return ds
    rows = np.random.default_rng(seed).choice(len(ds), size=n, replace=False)
    return ds.select(np.sort(rows))  # file order, so a subset reads like the split it came from


def tokenize_dataset(ds: datasets.Dataset, tokenizer, task: str, max_length: int) -> datasets.Dataset:
    spec = get_task(task)
    missing = [name for name in (*spec.text_fields, "label") if name not in ds.column_names]
    if missing:
        raise BermoPruneError(
            f"dataset has no column {missing[0]!r} needed for {spec.dirname} (columns: {', '.join(ds.column_names)})"
        )
    if max_length <= 0:
        raise BermoPruneError(f"max_length must be positive, got {max_length}")

    def encode(batch: dict[str, list]) -> dict[str, list]:
        # No padding: the collator pads each batch only to its own longest example.
        encoded = tokenizer(*(batch[name] for name in spec.text_fields), truncation=True, max_length=max_length)
        return {**encoded, "length": [len(ids) for ids in encoded["input_ids"]]}

    encoded = ds.map(
        encode,
        batched=True,
        remove_columns=[name for name in ds.column_names if name != "label"],
        desc=f"tokenising {spec.dirname}",
    )
    return encoded.rename_column("label", "labels")  # the name HF models take the targets under


def compute_metrics(task: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    spec = get_task(task)
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if spec.is_regression:
        scores = predictions.squeeze(-1) if predictions.ndim == 2 else predictions
        return {
            "pearson": float(pearsonr(scores, labels)[0]),
            "spearman": float(spearmanr(scores, labels)[0]),
        }
    classes = predictions.argmax(-1) if predictions.ndim == 2 else predictions
    metrics = {"accuracy": float(accuracy_score(labels, classes))}
    if spec.main_metric == "f1":
        metrics["f1"] = float(f1_score(labels, classes, zero_division=0))
    elif spec.main_metric == "matthews_correlation":
        metrics["matthews_correlation"] = float(matthews_corrcoef(labels, classes))
    return metrics


def metric_for_trainer(task: str) -> Callable[[object], dict[str, float]]:
    spec = get_task(task)  # an unknown task should fail now, not after the first epoch

    def trainer_metrics(prediction) -> dict[str, float]:
        # Models that also return hidden states or attentions hand the Trainer a tuple; logits come first.
        predictions = prediction.predictions
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        return compute_metrics(spec.name, predictions, prediction.label_ids)

    return trainer_metrics
