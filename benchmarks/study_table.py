"""Print the README's table of the SST-2 study from its report, so the quoted numbers are the report's.

    python benchmarks/study_table.py benchmarks/results/sst2/report

One row per pruner x sparsity: each arch's dev accuracy (mean +/- std over seeds) with its number of
diverged runs, and the paired BERMo - BERT difference; then the per-pruner tests of the report.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bermo_prune.bench.compare import p_value, signed_points
from bermo_prune.bench.report import fmt


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
            return f"{fmt(row['metric_mean'], True)} +/- {fmt(row['metric_std'], True)}" if row else "-"

        def div(row):
            return f"{row['diverged']}/{row['seeds']}" if row else "-"

        diff = (f"{signed_points(paired['diff_mean'])} +/- {fmt(paired['diff_std'], True)} ({paired['pairs']})"
                if paired else "-")
        print(f"| {pruner} | {target:.0%} | {acc(bert)} | {acc(bermo)} | {diff} | {div(bert)} / {div(bermo)} |")
    print()
    print("| pruner | pairs | BERMo - BERT | BERMo higher / BERT higher / tie | sign test p "
          "| only BERT / only BERMo diverged | McNemar p | epoch-1 difference |")
    print("|---|---|---|---|---|---|---|---|")
    for r in comparison["pooled"]:
        print(f"| {r['pruner']} | {r['pairs']} | {signed_points(r['diff_mean'])} | {r['b_higher']} / {r['a_higher']} / "
              f"{r['ties']} | {p_value(r['sign_test_p'])} | {r['only_a_diverged']} / {r['only_b_diverged']} | "
              f"{p_value(r['mcnemar_p'])} | {signed_points(r['epoch1_diff_mean'])} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/study_table.py REPORT_DIR")
    main(sys.argv[1])
