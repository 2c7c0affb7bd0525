"""Paired comparison of two archs in one sweep: the question the study asks (does BERMo prune better than BERT?).

Runs pair up when they share pruner, target sparsity and seed: the seed fixes the training subsample,
the batch order and the classifier's initialisation, so a pair differs only in the arch. Per cell
the report gives the mean paired difference; pooled over a pruner's sparsities it adds two exact
tests that need no normality: a sign test on which arch scored higher, and McNemar's test on
which arch diverged when only one of the two did.
"""

from __future__ import annotations

from collections import defaultdict
from statistics import mean, stdev

from scipy.stats import binomtest

from bermo_prune.bench.results import DENSE, WITH_METRIC, fmt, main_value

ALL_PRUNERS = "all pruners"
COLUMNS = (
    "pruner", "target_sparsity", "pairs", "a_mean", "b_mean", "diff_mean", "diff_std", "b_higher", "a_higher", "ties",
    "sign_test_p", "a_diverged", "b_diverged", "only_a_diverged", "only_b_diverged", "mcnemar_p", "epoch1_diff_mean",
)


def _first_eval(result: dict) -> float | None:
    history = result.get("eval_history") or []
    return history[0].get("metric") if history else None


def _pairs(results: list[dict], arch_a: str, arch_b: str) -> dict[tuple[str, float], list[tuple[dict, dict]]]:
    finished: dict[tuple, dict] = {}
    for r in results:
        if r.get("status") in WITH_METRIC and main_value(r) is not None:
            key = (r.get("pruner") or DENSE, round(float(r.get("target_sparsity") or 0.0), 6), r.get("seed"))
            finished[(r["arch"], *key)] = r
    cells: dict[tuple[str, float], list[tuple[dict, dict]]] = defaultdict(list)
    for (arch, pruner, target, seed), a in sorted(finished.items(), key=lambda kv: tuple(map(str, kv[0]))):
        b = finished.get((arch_b, pruner, target, seed))
        if arch == arch_a and b is not None:
            cells[(pruner, target)].append((a, b))
    return cells


def _sign_test(wins_b: int, wins_a: int) -> float | None:
    return binomtest(wins_b, wins_b + wins_a, 0.5).pvalue if wins_a + wins_b else None


def _summary(pairs: list[tuple[dict, dict]]) -> dict:
    diffs = [main_value(b) - main_value(a) for a, b in pairs]
    early = [(fa, fb) for a, b in pairs if (fa := _first_eval(a)) is not None and (fb := _first_eval(b)) is not None]
    only_a = sum(a["status"] == "diverged" and b["status"] != "diverged" for a, b in pairs)
    only_b = sum(b["status"] == "diverged" and a["status"] != "diverged" for a, b in pairs)
    wins_b = sum(d > 0 for d in diffs)
    wins_a = sum(d < 0 for d in diffs)
    return {
        "pairs": len(pairs),
        "a_mean": mean(main_value(a) for a, _ in pairs),
        "b_mean": mean(main_value(b) for _, b in pairs),
        "diff_mean": mean(diffs),
        "diff_std": stdev(diffs) if len(diffs) > 1 else 0.0,
        "b_higher": wins_b,
        "a_higher": wins_a,
        "ties": len(diffs) - wins_a - wins_b,
        "sign_test_p": _sign_test(wins_b, wins_a),
        "a_diverged": sum(a["status"] == "diverged" for a, _ in pairs),
        "b_diverged": sum(b["status"] == "diverged" for _, b in pairs),
        "only_a_diverged": only_a,
        "only_b_diverged": only_b,
        # McNemar's exact test is the sign test over the discordant pairs
        "mcnemar_p": _sign_test(only_b, only_a),
        "epoch1_diff_mean": mean(fb - fa for fa, fb in early) if early else None,
    }


def compare(results: list[dict], arch_a: str = "bert", arch_b: str = "bermo") -> dict[str, list[dict]]:
    """Rows per pruner x sparsity (`cells`) and per pruner over all its sparsities (`pooled`)."""
    cells = _pairs(results, arch_a, arch_b)
    by_pruner: dict[str, list[tuple[dict, dict]]] = defaultdict(list)
    cell_rows = []
    for (pruner, target), pairs in sorted(cells.items(), key=lambda kv: (kv[0][0] != DENSE, kv[0])):
        cell_rows.append({"pruner": pruner, "target_sparsity": target, **_summary(pairs)})
        if pruner != DENSE:
            by_pruner[pruner].extend(pairs)
            by_pruner[ALL_PRUNERS].extend(pairs)
    pooled = [{"pruner": p, **_summary(pairs)} for p, pairs in sorted(by_pruner.items(), key=lambda kv: (kv[0] == ALL_PRUNERS, kv[0]))]
    return {"arch_a": arch_a, "arch_b": arch_b, "cells": cell_rows, "pooled": pooled}


def p_value(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def signed_points(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}"


def markdown(comparison: dict) -> str:
    a, b = comparison["arch_a"], comparison["arch_b"]
    if not comparison["cells"]:
        return ""
    lines = [
        f"## {b} against {a}, paired by seed",
        "",
        f"A pair is one {a} run and one {b} run with the same pruner, sparsity and seed (same training subsample, "
        f"batch order and classifier initialisation). `diff` = {b} minus {a} (points, mean +/- std over pairs); "
        f"`higher` = pairs where each arch scored higher; `diverged` counts runs of each arch; `epoch 1 diff` = the "
        "same difference at the first dev evaluation.",
        "",
        f"| pruner | target | pairs | {a} | {b} | diff | higher {b} / {a} / tie | diverged {a} / {b} | epoch 1 diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in comparison["cells"]:
        lines.append(
            f"| {r['pruner']} | {r['target_sparsity']:.0%} | {r['pairs']} | {fmt(r['a_mean'], True)} | "
            f"{fmt(r['b_mean'], True)} | {signed_points(r['diff_mean'])} +/- {100 * r['diff_std']:.1f} | "
            f"{r['b_higher']} / {r['a_higher']} / {r['ties']} | {r['a_diverged']} / {r['b_diverged']} | "
            f"{signed_points(r['epoch1_diff_mean'])} |"
        )
    lines += [
        "",
        f"Pooled over each pruner's sparsities. Sign test: two-sided exact binomial test of `higher {b}` against "
        f"`higher {a}` (ties dropped). McNemar: two-sided exact test over the pairs where only one arch diverged. "
        "Small p-values are evidence of a difference; with few pairs even a real difference can leave p large.",
        "",
        f"| pruner | pairs | diff | higher {b} / {a} / tie | sign test p | diverged {a} / {b} | only {a} / only {b} diverged | McNemar p | epoch 1 diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in comparison["pooled"]:
        lines.append(
            f"| {r['pruner']} | {r['pairs']} | {signed_points(r['diff_mean'])} +/- {100 * r['diff_std']:.1f} | "
            f"{r['b_higher']} / {r['a_higher']} / {r['ties']} | {p_value(r['sign_test_p'])} | "
            f"{r['a_diverged']} / {r['b_diverged']} | {r['only_a_diverged']} / {r['only_b_diverged']} | "
            f"{p_value(r['mcnemar_p'])} | {signed_points(r['epoch1_diff_mean'])} |"
        )
    return "\n".join(lines + [""])
