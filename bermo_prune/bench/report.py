"""Sparsity-accuracy reports from a results directory: Markdown, CSV, JSON and PNG plots.

The same results always render the same report (sorted rows, no timestamps), so a report can be
committed and diffed.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path
from statistics import mean, stdev

from bermo_prune.bench import compare, plots
from bermo_prune.bench.results import DENSE, WITH_METRIC, cell_key, fmt, load_results, main_value
from bermo_prune.io import write_json_atomic

__all__ = ["DENSE", "WITH_METRIC", "fmt", "load_results", "main_value", "markdown", "summarize", "write_report"]

COLUMNS = (
    "arch", "pruner", "target_sparsity", "achieved_sparsity", "seeds", "diverged", "off_schedule", "crashed",
    "metric_mean", "metric_std", "best_mean", "healthy_mean", "first_eval_mean", "dense_mean", "retention",
    "train_examples_per_s",
)


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return mean(values), (stdev(values) if len(values) > 1 else 0.0)


def summarize(results: list[dict]) -> list[dict]:
    """One row per arch x pruner x target sparsity (dense baselines included, pruner 'dense')."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in results:
        groups[cell_key(r)].append(r)
    dense = {}
    for (arch, pruner, _), members in groups.items():
        if pruner == DENSE:
            dense[arch] = _stats([v for v in map(main_value, members) if v is not None])[0]
    rows = []
    for (arch, pruner, target), members in sorted(groups.items(), key=lambda kv: (kv[0][1] != DENSE, kv[0][1], kv[0][2], kv[0][0])):
        finished = [r for r in members if r.get("status") in WITH_METRIC]
        values = [v for v in map(main_value, finished) if v is not None]
        healthy = [v for r in finished if r["status"] != "diverged" and (v := main_value(r)) is not None]
        best = [r["best_metric"] for r in finished if r.get("best_metric") is not None]
        achieved = [r["sparsity"]["targeted"] for r in finished if r.get("sparsity")]
        speed = [r["train_examples_per_s"] for r in finished if r.get("train_examples_per_s")]
        # the first dev evaluation (end of epoch 1): how far a run got early, for the convergence question
        first = [r["eval_history"][0]["metric"] for r in finished if r.get("eval_history") and r["eval_history"][0].get("metric") is not None]
        metric_mean, metric_std = _stats(values)
        base = dense.get(arch)
        rows.append({
            "arch": arch,
            "pruner": pruner,
            "target_sparsity": target,
            "achieved_sparsity": mean(achieved) if achieved else None,
            "seeds": len(finished),
            "diverged": sum(r["status"] == "diverged" for r in finished),
            "off_schedule": sum(r["status"] == "off_schedule" for r in finished),
            "crashed": sum(r.get("status") == "crashed" for r in members),
            "metric_mean": metric_mean,
            "metric_std": metric_std,
            "best_mean": mean(best) if best else None,
            "healthy_mean": mean(healthy) if healthy else None,
            "first_eval_mean": mean(first) if first else None,
            "dense_mean": base,
            "retention": metric_mean / base if metric_mean is not None and base else None,
            "train_examples_per_s": mean(speed) if speed else None,
        })
    return rows


def markdown(rows: list[dict], results: list[dict]) -> str:
    metric = next((r.get("main_metric") for r in results if r.get("main_metric")), "metric")
    reasons = sorted({r["reason"].split(":")[0] for r in results if r.get("status") == "diverged" and r.get("reason")})
    lines = [
        f"# Sparsity-accuracy report ({len(results)} runs)",
        "",
        f"Dev {metric} (x100) per arch x pruner x target sparsity: mean +/- std over seeds, all finished runs "
        "(diverged runs included); `healthy` = mean of the runs that did not diverge; `off sched.` = runs whose "
        "pruner trailed its schedule by more than 5 points when the masks were fixed (the freeze did the pruning; "
        "their metric counts like any other); `epoch 1` = mean at the first "
        "dev evaluation (end of the first epoch, mid-pruning for pruned runs); retention = mean / dense "
        "mean of the same arch and budget. Sparsity is over the encoder Linear weights; ex/s is the training "
        "throughput (wall clock, so it depends on the machine and its load).",
        "",
        "| pruner | target | arch | achieved | seeds | diverged | off sched. | " + metric
        + " | healthy | epoch 1 | best | retention | ex/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        spread = f"{fmt(r['metric_mean'], True)} +/- {fmt(r['metric_std'], True)}" if r["metric_mean"] is not None else "-"
        lines.append(
            f"| {r['pruner']} | {r['target_sparsity']:.0%} | {r['arch']} | {fmt(r['achieved_sparsity'], True)} | "
            f"{r['seeds']} | {r['diverged']} | {r['off_schedule']} | {spread} | {fmt(r['healthy_mean'], True)} | "
            f"{fmt(r['first_eval_mean'], True)} | {fmt(r['best_mean'], True)} | "
            f"{fmt(r['retention'])} | {r['train_examples_per_s'] or 0:.0f} |"
        )
    crashed = sum(r["crashed"] for r in rows)
    lines += ["", f"Crashed runs (not in the means): {crashed}.", ""]
    collapse = sorted({(r.get("recipe") or {}).get("divergence", {}).get("collapse_fraction", 0.95) for r in results})
    lines += [
        "A run counts as diverged on a non-finite training loss, when at least "
        + "/".join(f"{c:.0%}" for c in collapse)
        + " of its dev predictions fall in one class, or when its dev metric is below the recipe's `min_metric`.",
        "",
        "Divergence reasons seen: " + ("; ".join(reasons) if reasons else "none") + ".",
        "",
    ]
    off = sorted(r.get("run_id", r["arch"]) for r in results if r.get("status") == "off_schedule")
    if off:
        lines += [f"Off-schedule runs ({len(off)}): " + ", ".join(off) + ".", ""]
    lines += start_lines(results)
    return "\n".join(lines)


def start_label(result: dict) -> str | None:
    """Which dense start a run of a sweep with a start pruned: the first 12 hex digits of its
    weights' digest, or None for a run that did not record one (made before runs recorded it)."""
    start = result.get("start")
    return start["weights_sha256"][:12] if start else None


def start_lines(results: list[dict]) -> list[str]:
    """A warning when the runs of one report pruned different dense starts (a sweep resumed with
    ``--new-start`` on another machine): their differences then include the start's."""
    groups: dict[str | None, list[dict]] = {}
    for r in results:
        groups.setdefault(start_label(r), []).append(r)
    if len(groups) < 2:
        return []
    lines = [f"**These runs start from {len(groups)} different dense starts** (a sweep resumed where its start "
             "was not kept, trained again): compare runs across them knowing that the start differs too.", ""]
    for label, group in groups.items():
        start = group[0].get("start") or {}
        about = f"`{label}`" if label else "not recorded"
        if start.get("metric") is not None:
            about += f" (dev {100 * start['metric']:.2f} on {start.get('device') or 'unknown device'})"
        lines.append(f"- start {about}: {len(group)} runs")
    return lines + [""]


def write_csv(rows: list[dict], path: Path, columns: tuple[str, ...]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue())


def write_report(results_dir: str | Path, report_dir: str | Path) -> dict[str, Path]:
    results = load_results(results_dir)
    rows = summarize(results)
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)

    paired = compare.compare(results)
    files = {"markdown": out / "report.md", "csv": out / "summary.csv", "json": out / "summary.json"}
    files["markdown"].write_text(markdown(rows, results) + compare.markdown(paired))
    write_csv(rows, files["csv"], COLUMNS)
    write_json_atomic(files["json"], rows)
    if paired["cells"]:
        files["comparison_csv"] = out / "comparison.csv"
        files["comparison_json"] = out / "comparison.json"
        write_csv(paired["cells"] + paired["pooled"], files["comparison_csv"], compare.COLUMNS)
        write_json_atomic(files["comparison_json"], paired)

    files.update(plots.write_plots(rows, results, out))
    return files
