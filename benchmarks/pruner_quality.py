"""Summarise the pruning-quality sweeps: how much of the dense accuracy each unstructured pruner
keeps, per budget, against the random-mask floor and the torch.nn.utils.prune anchor.

    python benchmarks/pruner_quality.py benchmarks/results/pruner_quality

reads ``short/runs/*.json`` and ``full/runs/*.json`` (``bermo-prune bench`` outputs of
``benchmarks/specs/pruner_quality_{short,full}.yaml``; a missing budget is skipped) and writes into
the same folder:

  summary.json         rows {"budget", "pruner", "sparsity", "seeds", "mean_metric", "std_metric",
                       "dense_metric", "retention", "diverged"} (BERT only; retention = mean metric /
                       the dense control of the same budget, trained as long)
  summary.md           one table per budget, how closely each pruner's own sparsity followed its
                       schedule, and the issue's targets, met or not
  accuracy_<budget>.png  dev accuracy against sparsity, one line per pruner
  tracking_<budget>.png  sparsity during training against the schedule, per pruner at 90%
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bermo_prune.bench.report import start_label, summarize  # noqa: E402
from bermo_prune.bench.plots import sparsity_tracking  # noqa: E402
from bermo_prune.bench.results import DENSE, WITH_METRIC, cell_key, freeze_jump, largest_in_size, load_results, schedule_gap  # noqa: E402
from bermo_prune.io import write_json_atomic  # noqa: E402

BUDGETS = ("short", "full")
RANDOM, ANCHOR = "random", "one-shot-magnitude"


def rows_for(budget: str, results: list[dict]) -> list[dict]:
    rows = []
    for r in summarize([x for x in results if x.get("arch") == "bert"]):
        if r["pruner"] == DENSE:
            continue
        rows.append({"budget": budget, "pruner": r["pruner"], "sparsity": r["target_sparsity"], "seeds": r["seeds"],
                     "mean_metric": r["metric_mean"],
                     "std_metric": r["metric_std"] if r["seeds"] > 1 else None,  # one seed has no spread
                     "dense_metric": r["dense_mean"],
                     "retention": r["retention"], "diverged": r["diverged"]})
    return rows


def other_starts(budget: str, results: list[dict]) -> dict[tuple, set]:
    """(budget, pruner, sparsity) -> the dense starts, other than the dense control's, that the
    cell's runs pruned (a sweep resumed with ``--new-start`` where its start was not kept): those
    cells compare with the control across two starts, and the tables say so."""
    bert = [r for r in results if r.get("arch") == "bert"]
    control = {start_label(r) for r in bert if cell_key(r)[1] == DENSE}
    cells: dict[tuple, set] = {}
    for r in bert:
        _, pruner, sparsity = cell_key(r)
        if pruner != DENSE and start_label(r) not in control:
            cells.setdefault((budget, pruner, sparsity), set()).add(start_label(r))
    return cells


def tracking_rows(budget: str, results: list[dict]) -> list[dict]:
    """Per pruner and sparsity (BERT): how far the runs' own sparsity strayed from the schedule
    inside the window, over the whole window and from 20% of it on (the cubic schedule's steep
    opening is where a pruner that needs time to act trails it), and the freeze's jump; the
    largest over seeds. One-shot masks have no window (None)."""
    cells = defaultdict(list)
    for r in results:
        arch, pruner, sparsity = cell_key(r)
        if arch == "bert" and pruner != DENSE and r.get("status") in WITH_METRIC:
            cells[(pruner, sparsity)].append(r)
    return [{"budget": budget, "pruner": pruner, "sparsity": sparsity,
             "max_gap": largest_in_size(schedule_gap(r) for r in runs),
             "late_gap": largest_in_size(schedule_gap(r, after=0.2) for r in runs),
             "freeze_jump": largest_in_size(freeze_jump(r) for r in runs)}
            for (pruner, sparsity), runs in sorted(cells.items(), key=lambda kv: (kv[0][0] in (RANDOM, ANCHOR), kv[0]))]


def tracking_table(tracking: list[dict], budget: str) -> list[str]:
    def points(value, signed=False):
        return "-" if value is None else f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"

    lines = ["| pruner | sparsity | max gap | from 20% of the window | freeze |", "|---|---|---|---|---|"]
    for r in tracking:
        if r["budget"] == budget:
            lines.append(f"| {r['pruner']} | {r['sparsity']:.0%} | {points(r['max_gap'])} | {points(r['late_gap'])} | "
                         f"{points(r['freeze_jump'], signed=True)} |")
    return lines


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets, each with whether this data meets it (or cannot say yet)."""
    lines = []
    cell = {(r["budget"], r["pruner"], r["sparsity"]): r for r in rows}
    gradual = [r for r in rows if r["pruner"] not in (RANDOM, ANCHOR) and r["mean_metric"] is not None]

    def best(budget, sparsity):
        found = [r for r in gradual if r["budget"] == budget and r["sparsity"] == sparsity and r["retention"]]
        return max(found, key=lambda r: r["retention"], default=None)

    for budget, sparsity, goal in (("full", 0.9, 0.97), ("full", 0.95, 0.93), ("short", 0.9, 0.93)):
        top = best(budget, sparsity)
        if top is None:
            lines.append(f"- {budget} budget, {sparsity:.0%}: best pruner keeps >= {goal:.0%} of dense: no data yet")
            continue
        verdict = "met" if top["retention"] >= goal else "missed"
        lines.append(f"- {budget} budget, {sparsity:.0%}: best pruner keeps >= {goal:.0%} of dense: {verdict} "
                     f"({top['pruner']} {top['retention']:.1%})")
    top, anchor = best("short", 0.9), cell.get(("short", ANCHOR, 0.9))
    if top and anchor and anchor["mean_metric"] is not None:
        margin = 100 * (top["mean_metric"] - anchor["mean_metric"])
        lines.append(f"- short budget, 90%: best pruner beats the torch.nn.utils.prune anchor by >= 2 points: "
                     f"{'met' if margin >= 2 else 'missed'} ({margin:+.1f})")
    below = [f"{r['budget']} {r['pruner']} {r['sparsity']:.0%}" for r in gradual
             if (floor := cell.get((r["budget"], RANDOM, r["sparsity"]))) and floor["mean_metric"] is not None
             and r["mean_metric"] <= floor["mean_metric"]]
    lines.append("- every pruner beats random masks at every sparsity: " + ("met" if not below else "missed (" + ", ".join(below) + ")"))
    return lines


def matrix(rows: list[dict], budget: str, moved: dict[tuple, set] | None = None) -> list[str]:
    """One line per pruner, one column per sparsity: accuracy x100 (retention), seeds > 1 marked,
    runs that collapsed marked with their count, cells pruned from another dense start than the
    control's (``moved``, from ``other_starts``) marked with a dagger (the form the README quotes)."""
    moved = moved or {}
    mine = [r for r in rows if r["budget"] == budget]
    sparsities = sorted({r["sparsity"] for r in mine})
    cell = {(r["pruner"], r["sparsity"]): r for r in mine}
    dense = next((r["dense_metric"] for r in mine if r["dense_metric"]), None)
    lines = ["| pruner | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |", "|---" * (len(sparsities) + 1) + "|"]
    order = sorted({r["pruner"] for r in mine}, key=lambda p: (p in (RANDOM, ANCHOR), p))
    for pruner in order:
        cells = []
        for s in sparsities:
            r = cell.get((pruner, s))
            if r is None or r["mean_metric"] is None:
                cells.append("-")
                continue
            text = f"{100 * r['mean_metric']:.1f} ({r['retention']:.1%})" if r["retention"] else f"{100 * r['mean_metric']:.1f}"
            if r["seeds"] > 1:
                text += f" [{r['seeds']} seeds]"
            if r["diverged"]:
                text += f" collapsed {r['diverged']}/{r['seeds']}"
            if (budget, pruner, s) in moved:
                text += " †"
            cells.append(text)
        lines.append(f"| {pruner} | " + " | ".join(cells) + " |")
    if dense is not None:
        lines.append(f"| dense control | {100 * dense:.1f} |" + " |" * (len(sparsities) - 1))
    labels = sorted({label for (b, _, _), found in moved.items() if b == budget for label in found})
    if labels:
        lines += ["", "† pruned from another dense start than the control's (start " + ", ".join(f"`{x}`" for x in labels)
                  + "): the sweep was resumed where its start was not kept and trained it again; see the folder's "
                  "start-bert-*.json."]
    return lines


def markdown(rows: list[dict], moved: dict[tuple, set] | None = None, tracking: list[dict] | None = None) -> str:
    lines = ["# Pruning quality: accuracy kept against the dense control", "",
             "BERT (MiniLM-L6), SST-2 dev accuracy x100, mean over seeds; retention = accuracy / the dense control of "
             "the same budget.", ""]
    for budget in BUDGETS:
        mine = [r for r in rows if r["budget"] == budget]
        if not mine:
            continue
        lines += [f"## {budget} budget", "", "Accuracy (retention):", "", *matrix(rows, budget, moved), "",
                  "| pruner | sparsity | seeds | accuracy | std | dense | retention | diverged |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in sorted(mine, key=lambda r: (r["sparsity"], r["pruner"])):
            accuracy = "-" if r["mean_metric"] is None else f"{100 * r['mean_metric']:.1f}"
            std = "-" if r["std_metric"] is None else f"{100 * r['std_metric']:.1f}"
            dense = "-" if r["dense_metric"] is None else f"{100 * r['dense_metric']:.1f}"
            retention = "-" if r["retention"] is None else f"{r['retention']:.1%}"
            lines.append(f"| {r['pruner']} | {r['sparsity']:.0%} | {r['seeds']} | {accuracy} | {std} | {dense} | {retention} | {r['diverged']} |")
        lines += ["", f"![accuracy against sparsity, {budget} budget](accuracy_{budget}.png)", ""]
        if any(r["budget"] == budget for r in tracking or []):
            lines += ["Schedule tracking (points of sparsity; largest over seeds): `max gap` = largest |own sparsity - "
                      "scheduled| at the logged steps inside the window, scheduled = the value asked at the pruner's last "
                      "mask update, or the schedule at that step for l0 and soft_movement, whose sparsity is trained between "
                      "updates (l0: the gates' expected sparsity, soft_movement: the threshold sparsity); `freeze` = the "
                      "change when the masks were fixed.", "",
                      *tracking_table(tracking, budget), "",
                      f"![sparsity against the schedule, {budget} budget](tracking_{budget}.png)", ""]
    lines += ["## Targets", "", *targets(rows), ""]
    return "\n".join(lines)


def plot(rows: list[dict], budget: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for pruner in sorted({r["pruner"] for r in rows if r["budget"] == budget}):
        points = sorted((r["sparsity"], r["mean_metric"]) for r in rows
                        if r["budget"] == budget and r["pruner"] == pruner and r["mean_metric"] is not None)
        if points:
            style = "--" if pruner in (RANDOM, ANCHOR) else "-"
            ax.plot([100 * s for s, _ in points], [100 * m for _, m in points], style, marker="o", label=pruner)
    dense = next((r["dense_metric"] for r in rows if r["budget"] == budget and r["dense_metric"]), None)
    if dense:
        ax.axhline(100 * dense, color="grey", lw=0.8, label="dense")
    ax.set(xlabel="sparsity of the encoder Linear weights (%)", ylabel="SST-2 dev accuracy", title=f"{budget} budget")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="folder with short/ and full/ sweep outputs")
    args = parser.parse_args()
    rows, moved, tracking = [], {}, []
    for budget in BUDGETS:
        if (args.results / budget / "runs").is_dir():
            results = load_results(args.results / budget)
            rows += rows_for(budget, results)
            moved.update(other_starts(budget, results))
            tracking += tracking_rows(budget, results)
            bert = [r for r in results if r.get("arch") == "bert"]
            if not sparsity_tracking(bert, args.results / f"tracking_{budget}.png"):
                tracking = [r for r in tracking if r["budget"] != budget]  # no logged sparsity to show
    if not rows:
        sys.exit(f"no finished runs under {args.results}/short or {args.results}/full")
    write_json_atomic(args.results / "summary.json", rows)
    text = markdown(rows, moved, tracking)
    (args.results / "summary.md").write_text(text)
    for budget in BUDGETS:
        if any(r["budget"] == budget for r in rows):
            plot(rows, budget, args.results / f"accuracy_{budget}.png")
    print(text)


if __name__ == "__main__":
    main()
