"""Copy runs of earlier sweeps into a later sweep's results where they are the same runs.

    python benchmarks/reuse_study_runs.py benchmarks/results/pruner_health
    python benchmarks/reuse_study_runs.py benchmarks/results/pruner_quality/short
    python benchmarks/reuse_study_runs.py benchmarks/results/sst2

Later sweeps share runs with earlier ones (same pretrained MiniLM-L6, 8,000 SST-2 examples x 2
epochs, bundled recipe, seed, arch and target):

- pruner health (``pruner_health``) takes magnitude and movement from the SST-2 study
  (``sst2``) and the learned-movement sweep (``movement_learned``), seeds 0-2. Re-running
  bert-magnitude-s0.5-seed0 with the code of that sweep gave the same dev accuracy (0.83028) and
  the same loss at every logged step. Learned-movement runs get the health sweep's run id (label
  ``movement-learned``).
- pruning quality, short budget (``pruner_quality/short``) takes BERT runs of pruner health:
  random, magnitude, movement, soft_movement and l0 at 50/80/90% seed 0 and at 90% seeds 1-2,
  and the single seed-0 runs of l0 at 95% and platon and obert at 90%. (BERMo runs and learned
  movement are not in that sweep.) Re-running bert-l0-s0.5-seed0 with the code of e5be7b8 gave the
  same dev accuracy (0.82225) and the same loss at every logged step.
- the SST-2 study (``sst2``) re-runs its L0 rows with the L0 pruner that follows its schedule
  (the old rows were moved to ``sst2/superseded/l0-before-schedule-fix/``): it takes L0 of pruner
  health, BERT and BERMo at 50/80/90% seeds 0-2, and BERT at 95% seeds 0-2 (seed 0 from pruner
  health, seeds 1-2 from the short pruning-quality sweep). It also takes soft movement and
  PLATON, which joined the study later: soft movement's runs of pruner health (BERT and BERMo at
  50/80/90% seeds 0-2) and BERT at 95% seeds 0-2 from the short pruning-quality sweep; PLATON's
  BERT runs of the short pruning-quality sweep (50% and 80% seed 0, 90% and 95% seeds 0-2; its
  90% seed 0 from pruner health, where it was first run). The study's spec runs the same bundled
  recipes on the same budget.

This saves hours of CPU per sweep. Each copy keeps its original ``sweep`` and ``environment``
fields and gains ``reused_from``; a run the target already has is left alone, so the copy is safe
to repeat and to run before or after ``bermo-prune bench`` fills in the rest.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SEEDS = (0, 1, 2)


def health_candidates():
    """(source file, run id in the health sweep, label)."""
    for arch in ("bert", "bermo"):
        for sparsity in ("0.5", "0.8", "0.9"):
            for seed in SEEDS:
                for pruner in ("magnitude", "movement"):
                    name = f"{arch}-{pruner}-s{sparsity}-seed{seed}"
                    yield RESULTS / "sst2" / "runs" / f"{name}.json", name, None
                yield (RESULTS / "movement_learned" / "runs" / f"{arch}-movement-s{sparsity}-seed{seed}.json",
                       f"{arch}-movement-learned-s{sparsity}-seed{seed}", "movement-learned")


def quality_short_candidates():
    """(source file, run id in the short pruning-quality sweep, label)."""
    health = RESULTS / "pruner_health" / "runs"
    pruners = ("random", "magnitude", "movement", "soft_movement", "l0")
    names = [f"bert-{pruner}-s{sparsity}-seed0" for pruner in pruners for sparsity in ("0.5", "0.8", "0.9")]
    names += [f"bert-{pruner}-s0.9-seed{seed}" for pruner in pruners for seed in (1, 2)]
    names += ["bert-l0-s0.95-seed0", "bert-platon-s0.9-seed0", "bert-obert-s0.9-seed0"]
    for name in names:
        yield health / f"{name}.json", name, None


def study_candidates():
    """(source file, run id in the SST-2 study, label): the L0 runs that followed their schedule,
    soft movement and PLATON."""
    health = RESULTS / "pruner_health" / "runs"
    short = RESULTS / "pruner_quality" / "short" / "runs"
    for pruner in ("l0", "soft_movement"):
        for arch in ("bert", "bermo"):
            for sparsity in ("0.5", "0.8", "0.9"):
                for seed in SEEDS:
                    name = f"{arch}-{pruner}-s{sparsity}-seed{seed}"
                    yield health / f"{name}.json", name, None
    yield health / "bert-l0-s0.95-seed0.json", "bert-l0-s0.95-seed0", None
    for seed in (1, 2):
        name = f"bert-l0-s0.95-seed{seed}"
        yield short / f"{name}.json", name, None
    for seed in SEEDS:
        name = f"bert-soft_movement-s0.95-seed{seed}"
        yield short / f"{name}.json", name, None
    yield health / "bert-platon-s0.9-seed0.json", "bert-platon-s0.9-seed0", None
    names = ["bert-platon-s0.5-seed0", "bert-platon-s0.8-seed0", "bert-platon-s0.9-seed1", "bert-platon-s0.9-seed2"]
    names += [f"bert-platon-s0.95-seed{seed}" for seed in SEEDS]
    for name in names:
        yield short / f"{name}.json", name, None


TARGETS = {"pruner_health": health_candidates, "short": quality_short_candidates, "sst2": study_candidates}


def main(out: Path) -> None:
    if out.name not in TARGETS:
        sys.exit(f"error: {out} is not a sweep this script fills (its folder must be named one of: {', '.join(TARGETS)})")
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    copied = 0
    for source, run_id, label in TARGETS[out.name]():
        target = runs / f"{run_id}.json"
        if not source.exists() or target.exists():
            continue
        result = json.loads(source.read_text())
        result.update(run_id=run_id, label=label, reused_from=str(source.relative_to(RESULTS.parent.parent)))
        target.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        copied += 1
    print(f"{copied} runs copied into {runs}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else RESULTS / "pruner_health"))
