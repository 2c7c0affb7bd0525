"""Run a sweep: one result file per run, written atomically, so a sweep can be killed, resumed,
sharded across machines (``--shard i/n``) and run in parallel (``--jobs N``)."""

from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import yaml
from pydantic import ValidationError

from bermo_prune.bench.spec import DENSE, Run, SweepSpec, expand, load_spec, spec_recipe, spec_training, start_training
from bermo_prune.errors import BermoPruneError
from bermo_prune.io import write_json_atomic, write_text_atomic

FINISHED = ("ok", "off_schedule", "diverged", "crashed")  # a run with one of these is not run again


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise BermoPruneError(f"--shard must look like i/n (e.g. 1/4), got {text!r}") from None
    if not 1 <= index <= count:
        raise BermoPruneError(f"--shard {text}: need 1 <= i <= n")
    return index, count


def result_path(out_dir: Path, run: Run) -> Path:
    return out_dir / "runs" / f"{run.run_id}.json"


def pending_runs(spec: SweepSpec, out_dir: Path, shard: tuple[int, int] = (1, 1), retry_crashed: bool = False) -> list[Run]:
    index, count = shard
    mine = expand(spec)[index - 1 :: count]
    todo = []
    for run in mine:
        path = result_path(out_dir, run)
        if path.is_file():
            try:
                status = json.loads(path.read_text()).get("status")
            except json.JSONDecodeError:
                status = None  # only possible if written by hand: results are written atomically
            if status in FINISHED and not (retry_crashed and status == "crashed"):
                continue
        todo.append(run)
    return todo


# What a spec may change in a sweep that already has runs: which runs it is made of. Anything
# else (checkpoint, task, data, training budget, start) changes how every run is made, and old and
# new runs would then share one report as if they were comparable.
GRID_FIELDS = ("name", "archs", "recipes", "sparsities", "seeds", "seeds_at_high_sparsity")


def record_spec(spec_path: str | Path, spec: SweepSpec, out_dir: Path) -> None:
    """Keep ``out_dir/spec.yaml`` as the record of the sweep whose runs (and dense start) the folder
    holds. A resumed sweep may grow or shrink its grid (the record is updated); a spec that would
    make its runs differently from the runs already there is refused."""
    record = out_dir / "spec.yaml"
    text = Path(spec_path).read_text(encoding="utf-8")
    made = any((out_dir / "runs").glob("*.json")) or (out_dir / "start").is_dir()  # a start is reused too
    if record.is_file() and made:
        old_text = record.read_text(encoding="utf-8")
        if old_text == text:
            return
        try:
            raw = yaml.safe_load(old_text)
            old = SweepSpec.model_validate({"name": spec.name, **raw} if isinstance(raw, dict) else raw)
        except (yaml.YAMLError, ValidationError):
            raise BermoPruneError(f"{record} is not a readable sweep spec: cannot tell whether the runs in "
                                  f"{out_dir} match {spec_path}; repair it or use another --out") from None
        changed = [field for field in SweepSpec.model_fields if field not in GRID_FIELDS
                   and getattr(old, field) != getattr(spec, field)]
        if changed:
            raise BermoPruneError(f"{out_dir} holds runs made with another {', '.join(changed)} than {spec_path} "
                                  f"gives (see {record}); they would not be comparable: use another --out")
    write_text_atomic(record, text)


def start_checkpoint(spec: SweepSpec, out_dir: Path, arch: str, new_start: bool = False) -> str:
    """The checkpoint the runs of ``arch`` start from: the spec's, or its dense fine-tune
    (made once, atomically, and reused by later runs, resumes and shards on the same disk).

    The fine-tune is not kept with the results (it is a checkpoint), so a sweep resumed on another
    disk trains it again, and on another machine, device or library it comes out with other
    weights: runs from both would share one report as if they had the same start. So a missing
    start is trained again only with ``new_start`` when the folder already holds runs of ``arch``;
    every run records the start it pruned (``start_identity``) and the report counts the starts."""
    if spec.start is None:
        return spec.checkpoint
    path = out_dir / "start" / arch
    if not start_is_whole(path):
        made = runs_of(out_dir, arch)
        if made and not new_start:
            raise BermoPruneError(
                f"{out_dir} holds {made} runs of {arch} made from a dense start that is not on this disk "
                f"({path}; starts are not kept with results); one trained here may have other weights and its "
                "runs would share the report with theirs: pass --new-start to train it anyway (each run "
                "records its start and the report counts them)")
        from bermo_prune import runs

        runs.finetune(
            spec.checkpoint, arch, spec.task, path, start_training(spec),
            seed=spec.start.seed, data_dir=spec.data, overwrite=True, progress=False,
        )
        identity = start_identity(path)
        record = json.loads((path / "metrics.json").read_text())
        write_json_atomic(out_dir / f"start-{arch}-{identity['weights_sha256'][:12]}.json", {**record, "start": identity})
    return str(path)


def start_is_whole(path: Path) -> bool:
    """Whether ``path`` holds a finished start: its report and a loadable model. A report alone
    (a results folder copied without its checkpoint) is not one: every run would crash on it."""
    return all((path / name).is_file() for name in ("metrics.json", "config.json")) and any(path.glob("*.safetensors"))


def runs_of(out_dir: Path, arch: str) -> int:
    """How many result files of ``arch`` the folder holds."""
    count = 0
    for path in (out_dir / "runs").glob("*.json"):
        try:
            count += json.loads(path.read_text()).get("arch") == arch
        except json.JSONDecodeError:
            continue
    return count


def start_identity(path: Path) -> dict:
    """What tells two dense starts apart: the digest of their weights (two machines that train the
    same start bit for bit give the same digest), with its dev metric and device for the reader."""
    digest = hashlib.sha256()
    for weights in sorted(path.glob("*.safetensors")):
        with weights.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    metrics = json.loads((path / "metrics.json").read_text())
    return {"weights_sha256": digest.hexdigest(), "metric": metrics.get("best_metric"),
            "device": (metrics.get("environment") or {}).get("device")}


def execute_run(spec: SweepSpec, run: Run, out_dir: Path, progress: bool = False) -> dict:
    """One run of the sweep; never raises for a failure of the run itself (recorded as crashed)."""
    from bermo_prune import runs

    started = time.time()
    base = {"run_id": run.run_id, "sweep": spec.name, "recipe_name": run.recipe, **run.model_dump()}
    try:
        checkpoint = start_checkpoint(spec, out_dir, run.arch)
        if spec.start is not None:
            base["start"] = start_identity(Path(checkpoint))
        if run.recipe == DENSE:
            report = runs.finetune(
                checkpoint, run.arch, spec.task, None, spec_training(spec),
                seed=run.seed, data_dir=spec.data, progress=progress,
            )
        else:
            teacher = checkpoint if spec.start is not None and spec.start.teacher else None
            recipe = spec_recipe(spec, run.recipe, run.sparsity, teacher)
            report = runs.prune(
                checkpoint, recipe, spec.task, None, arch=run.arch,
                seed=run.seed, data_dir=spec.data, progress=progress,
            )
    except Exception as exc:  # a crash of one run must not end the sweep
        return {
            **base,
            "status": "crashed",
            "reason": f"{type(exc).__name__}: {exc}".splitlines()[0],
            "traceback": traceback.format_exc(),
            "wall_time_s": time.time() - started,
        }
    return {**base, **report, "pruner": run.pruner, **({"label": run.label} if run.label else {})}


def _worker(spec_json: str, run_json: str, out_dir: str, threads: int) -> str:
    import torch

    torch.set_num_threads(threads)
    from bermo_prune.io import quiet_libraries

    quiet_libraries()
    spec, run = SweepSpec.model_validate_json(spec_json), Run.model_validate_json(run_json)
    write_json_atomic(result_path(Path(out_dir), run), execute_run(spec, run, Path(out_dir)))
    return run.run_id


def run_sweep(
    spec_path: str | Path,
    out_dir: str | Path,
    *,
    shard: tuple[int, int] = (1, 1),
    jobs: int = 1,
    retry_crashed: bool = False,
    new_start: bool = False,
    order=None,
    threads: int | None = None,
    on_start=None,
    on_done=None,
) -> list[Run]:
    """Run every pending run of this shard; returns the runs executed. ``order`` (a sort key on
    runs) changes which go first (the default is the spec's order), ``threads`` the torch threads
    of each parallel job (default: the cores shared out). ``on_start(todo)`` and
    ``on_done(run, result)`` let a front end show progress; ``new_start`` lets a sweep whose dense
    start is not on this disk train it again (see ``start_checkpoint``)."""
    spec = load_spec(spec_path)
    out_dir = Path(out_dir)
    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    record_spec(spec_path, spec, out_dir)
    todo = pending_runs(spec, out_dir, shard, retry_crashed)
    if order is not None:
        todo.sort(key=order)
    if on_start:
        on_start(todo)
    for arch in sorted({run.arch for run in todo}):  # before any worker starts, so none races to make it
        start_checkpoint(spec, out_dir, arch, new_start)
    if jobs <= 1:
        for run in todo:
            result = execute_run(spec, run, out_dir)
            write_json_atomic(result_path(out_dir, run), result)
            if on_done:
                on_done(run, result)
        return todo
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    by_id = {run.run_id: run for run in todo}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_worker, spec.model_dump_json(), r.model_dump_json(), str(out_dir), threads) for r in todo]
        for future in as_completed(futures):
            run = by_id[future.result()]
            if on_done:
                on_done(run, json.loads(result_path(out_dir, run).read_text()))
    return todo
