"""Print the README's table of the SST-2 study from its report, so the quoted numbers are the report's.

    python benchmarks/study_table.py benchmarks/results/sst2/report

One row per pruner x sparsity: each arch's dev accuracy (mean +/- std over seeds) with its number of
diverged runs, and the paired BERMo - BERT difference; then the per-pruner tests of the report.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def main(report_dir: str) -> None:
    report = Path(report_dir)
    rows = json.loads((report / "summary.json").read_text())
    comparison = json.loads((report / "comparison.json").read_text())
    cells = {(c["pruner"], c["target_sparsity"]): c for c in comparison["cells"]}
    by_cell = {(r["pruner"], r["target_sparsity"], r["arch"]): r for r in rows}
    print("| pruner | sparsity | BERT acc. | BERMo acc. | BERMo - BERT (paired) | diverged BERT / BERMo |")
    print("|---|---|---|---|---|---|")
    for pruner, target in sorted({(p, t) for p, t, _ in by_cell}, key=lambda k: (k[0] != "dense", k)):
        bert, bermo = by_cell.get((pruner, target, "bert")), by_cell.get((pruner, target, "bermo"))
        paired = cells.get((pruner, target))

        def acc(row):
            return f"{pct(row['metric_mean'])} +/- {pct(row['metric_std'])}" if row else "-"

        def div(row):
            return f"{row['diverged']}/{row['seeds']}" if row else "-"

        diff = f"{pct(paired['diff_mean'], True)} +/- {pct(paired['diff_std'])} ({paired['pairs']})" if paired else "-"
        print(f"| {pruner} | {target:.0%} | {acc(bert)} | {acc(bermo)} | {diff} | {div(bert)} / {div(bermo)} |")
    print()
    print("| pruner | pairs | BERMo - BERT | BERMo higher / BERT higher / tie | sign test p "
          "| only BERT / only BERMo diverged | McNemar p | epoch-1 difference |")
    print("|---|---|---|---|---|---|---|---|")
    for r in comparison["pooled"]:
        p_sign = "-" if r["sign_test_p"] is None else f"{r['sign_test_p']:.3f}"
        p_mcnemar = "-" if r["mcnemar_p"] is None else f"{r['mcnemar_p']:.3f}"
        print(f"| {r['pruner']} | {r['pairs']} | {pct(r['diff_mean'], True)} | {r['b_higher']} / {r['a_higher']} / "
              f"{r['ties']} | {p_sign} | {r['only_a_diverged']} / {r['only_b_diverged']} | {p_mcnemar} | "
              f"{pct(r['epoch1_diff_mean'], True)} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/study_table.py REPORT_DIR")
    main(sys.argv[1])
