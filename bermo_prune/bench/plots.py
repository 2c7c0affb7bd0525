"""PNG figures of a sweep (matplotlib, no pyplot state)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from statistics import mean

from bermo_prune.bench.results import WITH_METRIC, cell_key

ARCH_STYLE = {"bert": "-", "bermo": "--"}
# PNG metadata without the matplotlib version, so figures are reproducible byte for byte.
META = {"Software": None}


def _figure(width=7.5, height=4.5):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def accuracy_vs_sparsity(rows: list[dict], path: Path) -> None:
    fig = _figure()
    ax = fig.add_subplot()
    lines = defaultdict(list)
    for r in rows:
        if r["pruner"] != "dense" and r["metric_mean"] is not None:
            lines[(r["arch"], r["pruner"])].append(r)
    colours = {}
    for (arch, pruner), points in sorted(lines.items()):
        points.sort(key=lambda r: r["target_sparsity"])
        colour = colours.setdefault(pruner, f"C{len(colours)}")
        ax.errorbar(
            [100 * p["target_sparsity"] for p in points],
            [100 * p["metric_mean"] for p in points],
            yerr=[100 * p["metric_std"] for p in points],
            linestyle=ARCH_STYLE.get(arch, ":"), marker="o", capsize=3, color=colour, label=f"{arch} {pruner}",
        )
    for r in rows:
        if r["pruner"] == "dense" and r["metric_mean"] is not None:
            ax.axhline(100 * r["metric_mean"], color="gray", linestyle=ARCH_STYLE.get(r["arch"], ":"), linewidth=1,
                       label=f"{r['arch']} dense")
    ax.set(xlabel="target sparsity of encoder Linear weights (%)", ylabel="dev metric (x100)",
           title="accuracy against sparsity (mean +/- std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, metadata=META)


def divergence_vs_sparsity(rows: list[dict], path: Path) -> None:
    fig = _figure()
    ax = fig.add_subplot()
    pooled = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for r in rows:
        if r["pruner"] != "dense" and r["seeds"]:
            cell = pooled[r["arch"]][r["target_sparsity"]]
            cell[0] += r["diverged"]
            cell[1] += r["seeds"]
    for arch, cells in sorted(pooled.items()):
        xs = sorted(cells)
        ax.plot([100 * x for x in xs], [100 * cells[x][0] / cells[x][1] for x in xs], marker="o",
                linestyle=ARCH_STYLE.get(arch, ":"), label=arch)
    ax.set(xlabel="target sparsity (%)", ylabel="runs diverged (%)", ylim=(-5, 105),
           title="divergence rate against sparsity (all pruners pooled)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110, metadata=META)


def plotted_loss(curve: list[dict]) -> tuple[str, list[dict]]:
    """The task loss when the run logged it (penalties and distillation would hide how the model
    itself does), else the optimised total of older result files."""
    key = "task_loss" if curve and all("task_loss" in c for c in curve) else "loss"
    return key, [c for c in curve if key in c]


def diverged_loss_curves(results: list[dict], path: Path) -> bool:
    diverged = [r for r in results if r.get("status") == "diverged" and r.get("loss_curve")]
    if not diverged:
        return False
    fig = _figure()
    ax = fig.add_subplot()
    keys = set()
    for r in sorted(diverged, key=lambda r: r.get("run_id", "")):
        key, curve = plotted_loss(r["loss_curve"])
        keys.add(key)
        ax.plot([c["step"] for c in curve], [c[key] for c in curve], linestyle=ARCH_STYLE.get(r["arch"], ":"),
                linewidth=1, label=r.get("run_id", r["arch"]))
    ylabel = {frozenset({"task_loss"}): "training task loss", frozenset({"loss"}): "training loss"}.get(
        frozenset(keys), "training task loss (total loss for runs that did not log it)")
    ax.set(xlabel="step", ylabel=ylabel, title=f"loss curves of the {len(diverged)} diverged runs")
    ax.grid(alpha=0.3)
    if len(diverged) <= 12:
        ax.legend(fontsize=6)
    fig.savefig(path, dpi=110, metadata=META)
    return True


def bermo_layer_weights(results: list[dict], path: Path) -> bool:
    cells = defaultdict(list)
    for r in results:
        if r.get("layer_weights") and r.get("status") in WITH_METRIC:
            cells[(r.get("pruner") or "dense", float(r.get("target_sparsity") or 0.0))].append(r["layer_weights"])
    if not cells:
        return False
    keys = sorted(cells, key=lambda k: (k[0] != "dense", k[0], k[1]))
    matrix = [[mean(col) for col in zip(*cells[k])] for k in keys]
    fig = _figure(7.5, 0.9 + 0.32 * len(keys))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, aspect="auto", cmap="viridis")
    width = len(matrix[0])
    ax.set_xticks(range(width), ["emb"] + [f"L{i}" for i in range(1, width)] if width > 1 else ["L1"])
    ax.set_yticks(range(len(keys)), [f"{p} {s:.0%}" for p, s in keys], fontsize=7)
    ax.set_title("BERMo learned layer weights (mean over seeds)")
    fig.colorbar(image, ax=ax)
    fig.savefig(path, dpi=110, metadata=META)
    return True


def sparsity_tracking(results: list[dict], path: Path, near: float = 0.9) -> bool:
    """Sparsity during training against the recipe's schedule, per pruner at the target nearest
    ``near``: a pruner whose masks come from learned gates (l0) may trail its schedule and jump to
    the target when the masks are fixed."""
    from bermo_prune.recipes import Recipe

    pruned = [r for r in results if r.get("pruner") not in (None, "dense") and r.get("loss_curve") and r.get("recipe")
              and r.get("status") in WITH_METRIC]
    if not pruned:
        return False
    fig = _figure()
    ax = fig.add_subplot()
    schedules = defaultdict(list)  # pruners that share a schedule share its line
    for i, pruner in enumerate(sorted({cell_key(r)[1] for r in pruned})):  # two recipes of one pruner: two lines
        runs = [r for r in pruned if cell_key(r)[1] == pruner]
        target = min({r["target_sparsity"] for r in runs}, key=lambda t: (abs(t - near), -t))
        runs = [r for r in runs if r["target_sparsity"] == target]
        by_step = defaultdict(list)
        for r in runs:
            for point in r["loss_curve"]:
                if point.get("sparsity") is not None:
                    by_step[point["step"]].append(point["sparsity"])
        steps = sorted(by_step)
        ax.plot(steps, [100 * mean(by_step[s]) for s in steps], color=f"C{i}", marker=".",
                label=f"{pruner} {target:.0%}: achieved (mean of {len(runs)} runs)")
        planned = max(r["steps"] for r in runs)  # a run stopped by a non-finite loss has fewer
        schedule = Recipe.model_validate(runs[0]["recipe"]).sparsity_schedule(planned)  # the pruner's own
        schedules[(schedule, tuple(steps))].append(f"{pruner} {target:.0%}")
    for i, ((schedule, steps), names) in enumerate(sorted(schedules.items(), key=lambda kv: kv[1])):
        ax.plot(steps, [100 * schedule(s) for s in steps], color="black", linestyle=("--", ":", "-.")[i % 3],
                linewidth=1.2, zorder=3, label="schedule of " + ", ".join(names))
    ax.set(xlabel="step", ylabel="sparsity of targeted weights (%)", title="sparsity during training against the schedule")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110, metadata=META)
    return True


def write_plots(rows: list[dict], results: list[dict], out: Path) -> dict[str, Path]:
    files = {"accuracy_plot": out / "accuracy_vs_sparsity.png", "divergence_plot": out / "divergence_vs_sparsity.png"}
    accuracy_vs_sparsity(rows, files["accuracy_plot"])
    divergence_vs_sparsity(rows, files["divergence_plot"])
    if diverged_loss_curves(results, out / "diverged_loss_curves.png"):
        files["diverged_loss_plot"] = out / "diverged_loss_curves.png"
    if sparsity_tracking(results, out / "sparsity_tracking.png"):
        files["sparsity_tracking_plot"] = out / "sparsity_tracking.png"
    if bermo_layer_weights(results, out / "bermo_layer_weights.png"):
        files["layer_weights_plot"] = out / "bermo_layer_weights.png"
    return files
