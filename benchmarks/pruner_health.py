"""Summarise the pruner-health sweep: does each pruner follow its schedule, and does it beat the
random-mask control at every sparsity?

    bermo-prune bench benchmarks/specs/pruner_health.yaml --out benchmarks/results/pruner_health
    python benchmarks/pruner_health.py benchmarks/results/pruner_health

Writes into the results folder:
  summary.json   one row per arch x pruner x sparsity:
                 {"arch", "pruner", "score_mode", "sparsity", "seeds", "mean_metric", "diverged",
                  "max_schedule_gap", "freeze_jump", "budget_steps"}
  summary.md     the same as a table, with the margin over random of the same arch and sparsity
  trajectories.png  achieved sparsity against the schedule, one panel per pruner

Definitions. ``mean_metric``: dev accuracy averaged over the finished seeds, diverged runs
included. ``max_schedule_gap``: the largest |achieved - scheduled| sparsity over the logged steps
inside the pruning window (every 10 steps), over seeds (``bermo_prune.bench.results.schedule_gap``:
"scheduled" is the value asked at the pruner's last mask update, or, for L0 and soft movement, whose
sparsity is trained between updates, the schedule at that step; for L0 the achieved value is the
expected sparsity of the gates, for soft movement the threshold sparsity). ``freeze_jump``: the change of
sparsity when the masks were fixed (final - just before), the largest in size over seeds, signed.
``budget_steps``: optimizer steps of the runs.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from statistics import mean

from bermo_prune.bench.plots import META, _figure
from bermo_prune.bench.report import WITH_METRIC, load_results, main_value
from bermo_prune.bench.results import freeze_jump, largest_in_size, planned_schedule, schedule_gap

RANDOM = "random"


def score_mode(result: dict) -> str | None:
    if result.get("pruner") != "movement":
        return None
    return ((result.get("recipe") or {}).get("pruner", {}).get("options") or {}).get("scores", "accumulated")


def name(result: dict) -> str:
    mode = score_mode(result)
    return f"movement ({mode})" if mode else result["pruner"]


def summarize(results: list[dict]) -> list[dict]:
    cells = defaultdict(list)
    for r in results:
        if r.get("pruner") not in (None, "dense") and r.get("status") in WITH_METRIC:
            cells[(r["arch"], r["pruner"], score_mode(r), round(float(r["target_sparsity"]), 6))].append(r)
    rows = []
    for (arch, pruner, mode, sparsity), runs in sorted(cells.items(), key=lambda kv: (kv[0][1] != RANDOM, kv[0][1:], kv[0][0])):
        metrics = [v for v in map(main_value, runs) if v is not None]
        gaps = [schedule_gap(r) for r in runs]
        rows.append({
            "arch": arch,
            "pruner": pruner,
            "score_mode": mode,
            "sparsity": sparsity,
            "seeds": len(runs),
            "mean_metric": mean(metrics) if metrics else None,
            "diverged": sum(r["status"] == "diverged" for r in runs),
            "max_schedule_gap": max((g for g in gaps if g is not None), default=None),
            "freeze_jump": largest_in_size(freeze_jump(r) for r in runs),
            "budget_steps": max(r["steps"] for r in runs),
        })
    return rows


def _points(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def late_gaps(results: list[dict]) -> dict[tuple, float | None]:
    """Per arch x pruner x score mode x sparsity: the largest gap from 20% of the window on."""
    cells = defaultdict(list)
    for r in results:
        if r.get("pruner") not in (None, "dense") and r.get("status") in WITH_METRIC:
            cells[(r["arch"], r["pruner"], score_mode(r), round(float(r["target_sparsity"]), 6))].append(schedule_gap(r, 0.2))
    return {key: max((g for g in gaps if g is not None), default=None) for key, gaps in cells.items()}


def markdown(rows: list[dict], results: list[dict]) -> str:
    floor = {(r["arch"], r["sparsity"]): r["mean_metric"] for r in rows if r["pruner"] == RANDOM}
    late = late_gaps(results)
    lines = [
        f"# Pruner health on the study's budget ({len(results)} runs)",
        "",
        "SST-2 dev accuracy (x100, mean over seeds, diverged runs included); `vs random` = margin over the "
        "random-mask control of the same arch and sparsity; `max gap` = largest |achieved - scheduled| "
        "sparsity inside the pruning window (points; scheduled = the value asked at the pruner's last mask "
        "update, or the schedule at that step for l0 and soft_movement, whose sparsity is trained between "
        "updates), `from 20%` = the same from 20% of the window on; "
        "`freeze` = sparsity change when the masks were fixed (points).",
        "",
        "| arch | pruner | sparsity | seeds | accuracy | vs random | diverged | max gap | from 20% | freeze | steps |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        label = f"movement ({r['score_mode']})" if r["score_mode"] else r["pruner"]
        base = floor.get((r["arch"], r["sparsity"]))
        margin = None if base is None or r["mean_metric"] is None or r["pruner"] == RANDOM else r["mean_metric"] - base
        lines.append(
            f"| {r['arch']} | {label} | {r['sparsity']:.0%} | {r['seeds']} | {_points(r['mean_metric'])} | "
            f"{_points(margin, signed=True)} | {r['diverged']} | {_points(r['max_schedule_gap'])} | "
            f"{_points(late.get((r['arch'], r['pruner'], r['score_mode'], r['sparsity'])))} | "
            f"{_points(r['freeze_jump'], signed=True)} | {r['budget_steps']} |"
        )
    return "\n".join(lines) + "\n"


def trajectories(results: list[dict], path: Path) -> None:
    runs = [r for r in results if r.get("pruner") not in (None, "dense") and r.get("loss_curve") and r.get("recipe")]
    names = sorted({name(r) for r in runs}, key=lambda n: (n != RANDOM, n))
    if not names:
        return
    columns = 3
    rows = -(-len(names) // columns)
    fig = _figure(width=4 * columns, height=3.2 * rows)
    colours = {0.5: "tab:blue", 0.8: "tab:orange", 0.9: "tab:red"}
    for i, label in enumerate(names):
        ax = fig.add_subplot(rows, columns, i + 1)
        drawn = set()
        for r in sorted((r for r in runs if name(r) == label), key=lambda r: r["run_id"]):
            target = round(float(r["target_sparsity"]), 6)
            colour = colours.get(target, "tab:gray")
            curve = [c for c in r["loss_curve"] if "sparsity" in c]
            ax.plot([c["step"] for c in curve], [c["sparsity"] for c in curve], color=colour, alpha=0.6,
                    linewidth=1, linestyle="-" if r["arch"] == "bert" else "--")
            if target not in drawn:
                s, _ = planned_schedule(r)
                steps = range(0, r["steps"] + 1)
                ax.plot(steps, [s(t) for t in steps], color="black", linewidth=0.8, linestyle=":")
                drawn.add(target)
        ax.set(title=label, xlabel="step", ylabel="sparsity", ylim=(-0.02, 1.0))
        ax.grid(alpha=0.3)
    fig.suptitle("achieved sparsity (BERT solid, BERMo dashed; 50/80/90% blue/orange/red) vs schedule (dotted)")
    fig.savefig(path, dpi=100, metadata=META)


def main(results_dir: str) -> None:
    out = Path(results_dir)
    results = load_results(out)
    rows = summarize(results)
    (out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    text = markdown(rows, results)
    (out / "summary.md").write_text(text)
    trajectories(results, out / "trajectories.png")
    print(text)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/pruner_health")
