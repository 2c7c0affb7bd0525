"""Run a bench sweep on one GPU: several processes share the card, the most telling runs first.

A MiniLM-L6 training step (batch 32, length 64) is too small to fill a GPU, so ``--jobs``
processes share it. Measured on one H200 (2026-12-04, fp32 with TF32 matmuls): alone, the dense
start took 15 ms a step (2,105 steps in 32 s); eight at once, the dense control took 35 ms a step
and the pruning runs, which also run a teacher, 45-80 ms (4,210 steps in 190-340 s); four at
once, the pruning runs took ~45 ms a step (the card time-slices between processes and showed
95-99% busy). A GPU lease is short, so the runs go in order of what they tell: the dense
controls, then every recipe at ``--first-sparsity``, then the other sparsities from the highest
down, then the extra seeds (``--favour``-ed pruners' first); ``--first-runs`` puts chosen runs
before all of them (run-id patterns such as ``'bert-platon-s0.9-seed*'``). The result files are
the ones ``bermo-prune bench`` writes (one per run, atomic), so a lease that ends half-way leaves
whole runs, and a later call (or ``bermo-prune bench`` on CPUs) resumes the sweep.

    python benchmarks/gpu_sweep.py benchmarks/specs/pruner_quality_full.yaml \
        --out benchmarks/results/pruner_quality/full --jobs 8 --first-sparsity 0.9 --favour platon,soft_movement
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bermo_prune.bench.results import main_value  # noqa: E402
from bermo_prune.bench.runner import run_sweep  # noqa: E402
from bermo_prune.bench.spec import DENSE, Run, SweepSpec, load_spec  # noqa: E402


def priority(spec: SweepSpec, first_sparsity: float, favour: tuple[str, ...] = (), first_runs: tuple[str, ...] = ()):
    """Sort key: runs whose id matches a ``first_runs`` pattern (fnmatch), then the first seed's
    runs, then the other seeds of the ``favour``-ed pruners (e.g. the best two, which a benchmark
    wants on three seeds), then the rest; within each, by seed, dense before pruned,
    ``first_sparsity`` then the other sparsities from the highest down, then the spec's recipe
    order."""
    recipes = {name: i for i, name in enumerate(spec.recipes)}

    def key(run: Run):
        later = run.seed != spec.seeds[0] and run.pruner not in favour
        sparsity_rank = 0.0 if abs(run.sparsity - first_sparsity) < 1e-9 else 1.0 - run.sparsity
        picked = any(fnmatch.fnmatchcase(run.run_id, pattern) for pattern in first_runs)
        return (not picked, later, run.seed, run.recipe != DENSE, sparsity_rank, recipes[run.recipe])

    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("--out", required=True)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    parser.add_argument("--first-sparsity", type=float, default=0.9)
    parser.add_argument("--favour", default="", help="comma-separated pruners whose extra seeds go before the others'")
    parser.add_argument("--new-start", action="store_true",
                        help="train the dense start again when it is not on this disk (a fresh machine)")
    parser.add_argument("--first-runs", default="",
                        help="comma-separated run-id patterns (e.g. 'bert-platon-s0.9-seed*') to run before all others")
    args = parser.parse_args(argv)

    spec = load_spec(args.spec)
    favour = tuple(name for name in args.favour.split(",") if name)
    first_runs = tuple(pattern for pattern in args.first_runs.split(",") if pattern)
    began = time.time()

    def started(todo):
        print(f"{len(todo)} runs to do, {args.jobs} at a time", flush=True)

    def done(run, result):
        value = main_value(result)
        print(f"[{time.time() - began:6.0f} s] {run.run_id}: {result.get('status')} "
              f"{'' if value is None else f'{value:.4f}'} ({result.get('wall_time_s', 0):.0f} s)", flush=True)

    run_sweep(args.spec, args.out, jobs=args.jobs, threads=args.threads, new_start=args.new_start,
              order=priority(spec, args.first_sparsity, favour, first_runs), on_start=started, on_done=done)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
