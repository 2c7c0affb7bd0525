"""What a results directory holds, read once for the report, the comparison and the plots: the
run files and the small facts every table needs (finished statuses, a run's main metric)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bermo_prune.errors import BermoPruneError

DENSE = "dense"
# Statuses of runs that finished with a dev metric: off_schedule runs (the freeze, not the pruner,
# set their final sparsity) count like ok ones, and are counted on their own too.
WITH_METRIC = ("ok", "off_schedule", "diverged")


def load_results(results_dir: str | Path) -> list[dict]:
    runs_dir = Path(results_dir) / "runs"
    if not runs_dir.is_dir():
        raise BermoPruneError(f"{results_dir}: no runs/ folder with results (run `bermo-prune bench` first)")
    results = []
    for path in sorted(runs_dir.glob("*.json")):
        try:
            results.append(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise BermoPruneError(f"{path}: not valid JSON ({exc})") from None
    if not results:
        raise BermoPruneError(f"{runs_dir}: no result files")
    return results


def main_value(result: dict) -> float | None:
    value = (result.get("metrics") or {}).get(result.get("main_metric"))
    return value if value is not None and math.isfinite(value) else None


def fmt(value, pct: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" if pct else f"{value:.4f}"
