"""Copy runs of earlier sweeps into the pruner-health results where they are the same runs.

    python benchmarks/reuse_study_runs.py benchmarks/results/pruner_health

The SST-2 study (benchmarks/results/sst2) and the learned-movement sweep
(benchmarks/results/movement_learned) ran magnitude and movement on the pruner-health budget
(pretrained MiniLM-L6, 8,000 SST-2 examples x 2 epochs, the bundled recipes, seeds 0-2). Their code
paths have not changed since: re-running bert-magnitude-s0.5-seed0 with the current code gave the
same dev accuracy (0.83028) and the same loss at every logged step. So the health sweep takes those
runs instead of spending ~2.5 hours of CPU on them again. Each copy keeps its original ``sweep``
and ``environment`` fields and gains ``reused_from``; a run the health sweep already has is left
alone. Learned-movement runs get the health sweep's run id (label ``movement-learned``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SPARSITIES = ("0.5", "0.8", "0.9")
SEEDS = (0, 1, 2)


def candidates():
    """(source file, run id in the health sweep, label)."""
    for arch in ("bert", "bermo"):
        for sparsity in SPARSITIES:
            for seed in SEEDS:
                for pruner in ("magnitude", "movement"):
                    name = f"{arch}-{pruner}-s{sparsity}-seed{seed}"
                    yield RESULTS / "sst2" / "runs" / f"{name}.json", name, None
                yield (RESULTS / "movement_learned" / "runs" / f"{arch}-movement-s{sparsity}-seed{seed}.json",
                       f"{arch}-movement-learned-s{sparsity}-seed{seed}", "movement-learned")


def main(out: Path) -> None:
    runs = out / "runs"
    copied = 0
    for source, run_id, label in candidates():
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
