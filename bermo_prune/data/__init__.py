"""Task data: GLUE splits, subsampling, tokenisation and metrics."""

from bermo_prune.data.glue import (
    TASKS,
    TaskSpec,
    compute_metrics,
    data_source,
    get_task,
    load_split,
    metric_for_trainer,
    subsample,
    tokenize_dataset,
)

__all__ = [
    "TASKS",
    "TaskSpec",
    "compute_metrics",
    "data_source",
    "get_task",
    "load_split",
    "metric_for_trainer",
    "subsample",
    "tokenize_dataset",
]
