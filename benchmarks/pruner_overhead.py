"""Training-step time with each pruner attached, as a ratio to dense training in the same process.

    python benchmarks/pruner_overhead.py --out benchmarks/results/pruner_overhead

MiniLM-L6 (the packaged checkpoint) as BERT, SST-2 batches of 32 at max length 64 (fixed
batches, so every configuration sees the same work). Each configuration is timed in
interleaved rounds (dense, torch-prune, magnitude, ..., then the next round starting one
configuration later) and the ratio of medians is reported, so machine noise and drift hit all
configurations alike. Mask updates (every 10 steps) are
inside the timed steps. ``torch.nn.utils.prune`` (global L1, fixed mask) is the reference peer.

oBERT costs nothing between its pruning steps and a lot at them, so it is reported apart: the step
time while it collects gradients into its block Fisher inverses (every timed step collects here),
the seconds of one pruning step (saliencies, top-k, the optimal update of the kept weights) on
the Fisher collected during the rounds, and what these come to over the bundled recipe's runs.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn.utils import prune as torch_prune

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bermo_prune.data import load_split, tokenize_dataset  # noqa: E402
from bermo_prune.io import write_json_atomic  # noqa: E402
from bermo_prune.models import load_classifier  # noqa: E402
from bermo_prune.pruning.masks import select_modules  # noqa: E402
from bermo_prune.pruning.registry import get_pruner_class  # noqa: E402
from bermo_prune.recipes import DEFAULT_INCLUDE, Recipe, load_recipe, resolve_recipe  # noqa: E402
from bermo_prune.runs import environment  # noqa: E402

PRUNERS = ("magnitude", "movement", "soft_movement", "l0", "platon", "obert")
TARGETS = {"magnitude": 1.05, "movement": 1.25, "l0": 1.30, "platon": 1.15}
PEERS = {"torch.nn.utils.prune": 1.06, "Intel Neural Compressor": 1.26, "NNI movement": 2.05,
         "SparseML movement": 1.57, "nn_pruning": 1.96}


def batches(tokenizer, count: int, batch_size: int = 32, max_length: int = 64):
    from transformers import DataCollatorWithPadding

    ds = tokenize_dataset(load_split("sst2", "train").select(range(count * batch_size)), tokenizer, "sst2", max_length)
    ds = ds.remove_columns([c for c in ds.column_names if c == "length"])
    collate = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=max_length)
    return [collate([ds[i] for i in range(b * batch_size, (b + 1) * batch_size)]) for b in range(count)]


def recipe_for(pruner: str, total_steps: int) -> Recipe:
    raw = {
        "name": f"overhead-{pruner}", "pruner": {"name": pruner}, "target_sparsity": 0.5,
        "schedule": {"shape": "linear", "start": 0.0, "end": 1.0, "update_every": 10},
    }
    if pruner == "l0":
        raw["penalty"] = {"value": 1.0}
    if pruner == "obert":  # every timed step collects a gradient; its one pruning step is timed apart
        raw["pruner"]["options"] = {"num_grads": total_steps}
        raw["schedule"]["update_every"] = total_steps
    return Recipe.model_validate(raw)


def obert_share(recipe_name: str, total_steps: int, masked_step_s: float, collect_step_s: float,
                prune_s: float) -> dict:
    """oBERT's extra time over a run of ``total_steps`` with a bundled recipe's schedule, from the
    measured step times: the collecting steps' excess over a masked step, plus the pruning steps."""
    pruner = get_pruner_class("obert")(load_recipe(resolve_recipe(recipe_name)))
    pruner.set_total_steps(total_steps)
    steps = pruner.pruning_steps()
    collecting = sum(pruner.collecting(step) for step in range(1, total_steps + 1))
    extra = collecting * (collect_step_s - masked_step_s) + len(steps) * prune_s
    run = total_steps * masked_step_s + extra
    return {"recipe": recipe_name, "steps": total_steps, "pruning_steps": len(steps), "collecting_steps": collecting,
            "extra_s": extra, "run_s": run, "share": extra / run}


class Setup:
    """A model + optimizer (+ pruner) ready to take training steps."""

    def __init__(self, base_model, kind: str, total_steps: int):
        self.model = copy.deepcopy(base_model).train()
        self.pruner = None
        if kind == "torch_prune":
            modules = select_modules(self.model, [DEFAULT_INCLUDE]).values()
            torch_prune.global_unstructured([(m, "weight") for m in modules], torch_prune.L1Unstructured, amount=0.5)
        elif kind != "dense":
            self.pruner = get_pruner_class(kind)(recipe_for(kind, total_steps))
            self.pruner.attach(self.model, total_steps)
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        if self.pruner is not None:
            own = {id(p) for g in self.pruner.param_groups() for p in g["params"]}
            groups[0]["params"] = [p for p in groups[0]["params"] if id(p) not in own]
            groups += self.pruner.param_groups()
        self.optimizer = torch.optim.AdamW(groups, lr=5e-5)
        self.step_count = 0

    def step(self, batch) -> None:
        loss = self.model(**batch).loss
        if self.pruner is not None and (extra := self.pruner.penalty()) is not None:
            loss = loss + extra
        loss.backward()
        if self.pruner is not None:
            self.pruner.before_optimizer_step()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        if self.pruner is not None:
            self.pruner.on_step_end(self.step_count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/pruner_overhead")
    args = parser.parse_args()

    torch.manual_seed(0)
    base, tokenizer = load_classifier("minilm-l6", "bert", num_labels=2)
    data = batches(tokenizer, args.steps)
    kinds = ("dense", "torch_prune", *PRUNERS)
    total = (args.steps + 2) * args.rounds + 10
    setups = {kind: Setup(base, kind, total) for kind in kinds}
    for setup in setups.values():  # warm-up: allocator, kernels, first mask update
        for batch in data[:2]:
            setup.step(batch)
    times = {kind: [] for kind in kinds}
    for round_index in range(args.rounds):
        # each round starts one configuration later, so a machine that speeds up or slows down
        # during the run does not always hit the same configuration first
        shift = round_index % len(kinds)
        for kind in kinds[shift:] + kinds[:shift]:
            setup = setups[kind]
            start = time.perf_counter()
            for batch in data:
                setup.step(batch)
            times[kind].append((time.perf_counter() - start) / len(data))
    dense = statistics.median(times["dense"])
    obert = setups["obert"].pruner
    start = time.perf_counter()
    obert.update(0.5)  # scores from the Fisher of the timed steps, top-k, the optimal update
    prune_s = time.perf_counter() - start
    collect_s, masked_s = statistics.median(times["obert"]), statistics.median(times["magnitude"])
    # the short budget (8,000 examples x 2 epochs) and the full one (67,349 x 2) at batch 32
    obert_runs = [obert_share("sst2-obert", steps, masked_s, collect_s, prune_s) for steps in (500, 4210)]
    rows = [
        {"config": kind, "median_step_s": statistics.median(times[kind]), "ratio": statistics.median(times[kind]) / dense,
         "target": TARGETS.get(kind)}
        for kind in kinds
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/pruner_overhead.py " + " ".join(sys.argv[1:])
    write_json_atomic(out / "overhead.json", {"command": command.strip(), "rows": rows, "raw_step_s": times,
                                              "obert": {"collecting_step_ratio": collect_s / dense,
                                                        "pruning_step_s": prune_s, "runs": obert_runs},
                                              "peers": PEERS, "environment": environment()})
    lines = [
        "# Pruner overhead: training-step time / dense (MiniLM-L6, SST-2, batch 32, length 64)", "",
        f"Command: `{command.strip()}`; {args.rounds} interleaved rounds of {args.steps} steps, ratio of medians.", "",
        "| config | step (s) | ratio to dense | target |", "|---|---|---|---|",
    ]
    for r in rows:
        target = f"<= {r['target']:.2f}" if r["target"] else "-"
        lines.append(f"| {r['config']} | {r['median_step_s']:.3f} | {r['ratio']:.3f} | {target} |")
    lines += ["", f"oBERT: the obert row is a step that collects a gradient into the Fisher inverses (ratio "
              f"{collect_s / dense:.3f}); steps outside the collections cost what a masked step does. One pruning step "
              f"(saliencies, top-k, optimal update) takes {prune_s:.2f} s. Over `recipes/sst2-obert.yaml`:", "",
              "| steps | pruning steps | collecting steps | oBERT's extra time (s) | share of the run |", "|---|---|---|---|---|"]
    lines += [f"| {r['steps']} | {r['pruning_steps']} | {r['collecting_steps']} | {r['extra_s']:.0f} | {r['share']:.1%} |"
              for r in obert_runs]
    lines += ["", "Peers as measured by the issue author: " + ", ".join(f"{k} {v}" for k, v in PEERS.items()) + ".", ""]
    (out / "overhead.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
