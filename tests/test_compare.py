"""The paired BERT-vs-BERMo comparison of a report, on hand-made result files (no training)."""

from __future__ import annotations

import json

import pytest

from bermo_prune.bench.compare import ALL_PRUNERS, compare
from bermo_prune.bench.report import write_report


def run(arch, pruner, sparsity, seed, accuracy, status="ok", first=None):
    return {
        "arch": arch, "pruner": pruner, "target_sparsity": sparsity, "seed": seed, "status": status,
        "main_metric": "accuracy", "metrics": {"accuracy": accuracy},
        "eval_history": [{"metric": accuracy if first is None else first}],
        "run_id": f"{arch}-{pruner}-s{sparsity}-seed{seed}",
    }


@pytest.fixture
def results():
    rs = []
    for seed in range(6):  # BERMo ahead by 2 points in every pair, and 5 points after epoch 1
        rs.append(run("bert", "l0", 0.9, seed, 0.70, first=0.60))
        rs.append(run("bermo", "l0", 0.9, seed, 0.72, first=0.65))
    for seed in range(4):  # only BERT collapses
        rs.append(run("bert", "movement", 0.9, seed, 0.5, status="diverged"))
        rs.append(run("bermo", "movement", 0.9, seed, 0.6))
    rs.append(run("bert", "movement", 0.9, 4, 0.5, status="diverged"))  # both collapse: a tie
    rs.append(run("bermo", "movement", 0.9, 4, 0.5, status="diverged"))
    rs.append(run("bert", "movement", 0.9, 5, 0.8))  # no partner: left out
    rs.append(run("bermo", "movement", 0.9, 6, 0.8, status="crashed"))  # crashed: left out
    return rs


def test_pairs_share_pruner_sparsity_and_seed(results):
    cells = {(c["pruner"], c["target_sparsity"]): c for c in compare(results)["cells"]}
    assert set(cells) == {("l0", 0.9), ("movement", 0.9)}
    l0, movement = cells[("l0", 0.9)], cells[("movement", 0.9)]
    assert l0["pairs"] == 6 and movement["pairs"] == 5
    assert l0["diff_mean"] == pytest.approx(0.02) and l0["diff_std"] == pytest.approx(0.0, abs=1e-12)
    assert l0["epoch1_diff_mean"] == pytest.approx(0.05)
    assert (l0["b_higher"], l0["a_higher"], l0["ties"]) == (6, 0, 0)
    assert (movement["b_higher"], movement["a_higher"], movement["ties"]) == (4, 0, 1)
    assert (movement["a_diverged"], movement["b_diverged"]) == (5, 1)


def test_exact_tests(results):
    pooled = {r["pruner"]: r for r in compare(results)["pooled"]}
    assert pooled["l0"]["sign_test_p"] == pytest.approx(2 * 0.5**6)  # 6 of 6 one way
    assert pooled["l0"]["mcnemar_p"] is None  # no pair where only one diverged
    assert pooled["movement"]["mcnemar_p"] == pytest.approx(2 * 0.5**4)  # 4 of 4 discordant pairs one way
    assert (pooled["movement"]["only_a_diverged"], pooled["movement"]["only_b_diverged"]) == (4, 0)
    everything = pooled[ALL_PRUNERS]
    assert everything["pairs"] == 11 and (everything["b_higher"], everything["a_higher"]) == (10, 0)
    assert everything["sign_test_p"] == pytest.approx(2 * 0.5**10)


def test_a_difference_both_ways_is_not_significant():
    rs = [run(arch, "magnitude", 0.5, seed, acc) for seed in range(4)
          for arch, acc in (("bert", 0.8 + 0.01 * (seed % 2)), ("bermo", 0.8 + 0.01 * (1 - seed % 2)))]
    (pooled,) = [r for r in compare(rs)["pooled"] if r["pruner"] == "magnitude"]
    assert (pooled["b_higher"], pooled["a_higher"]) == (2, 2) and pooled["sign_test_p"] == pytest.approx(1.0)
    assert pooled["diff_mean"] == pytest.approx(0.0, abs=1e-12)


def test_report_writes_the_comparison(tmp_path, results):
    (tmp_path / "runs").mkdir()
    for r in results:
        (tmp_path / "runs" / f"{r['run_id']}.json").write_text(json.dumps(r))
    files = write_report(tmp_path, tmp_path / "report")
    text = files["markdown"].read_text()
    assert "## bermo against bert, paired by seed" in text
    assert "| movement | 90% | 5 | 50.0 | 58.0 | +8.0 +/- 4.5 | 4 / 0 / 1 | 5 / 1 | +8.0 |" in text
    saved = json.loads(files["comparison_json"].read_text())
    assert saved == json.loads(json.dumps(compare(results)))
    assert files["comparison_csv"].read_text().splitlines()[0].startswith("pruner,target_sparsity,pairs,")


def test_one_arch_only_has_no_comparison(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "a.json").write_text(json.dumps(run("bert", "l0", 0.5, 0, 0.8)))
    files = write_report(tmp_path, tmp_path / "report")
    assert "paired by seed" not in files["markdown"].read_text()
    assert "comparison_json" not in files
