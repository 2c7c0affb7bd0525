"""Output that is never half-written: results appear under their final name only when complete."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from bermo_prune.errors import BermoPruneError


def write_json_atomic(path: str | Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Readers (other shards, a resumed sweep) see the old file or the new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


def check_output_dir(out: str | Path, overwrite: bool) -> Path:
    """Refuse an output dir that already holds something, before any work is done."""
    out = _replaceable(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise BermoPruneError(f"{out} already exists and is not empty; pass --overwrite to replace it")
    ancestor = _existing_ancestor(out.resolve().parent)
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK):
        raise BermoPruneError(f"{out}: cannot write into {ancestor}")
    return out


def _replaceable(out: str | Path) -> Path:
    """``out`` as a dir that can be replaced whole when a run ends: its work is staged beside it
    under a name made from its own, and on success it is deleted and the work renamed into place.
    '.' or 'x/..' have no name of their own, and the current dir or one above it would be deleted
    with everything in it, the staged work included."""
    out = Path(out)
    if out.name in ("", ".", ".."):
        raise BermoPruneError(f"--out {out}: name the output directory itself (e.g. {out / 'run'}), "
                              "it is replaced as a whole when the run ends")
    if Path.cwd().resolve().is_relative_to(out.resolve()):
        raise BermoPruneError(f"--out {out} holds the current directory and is replaced as a whole when the run "
                              "ends: name a new directory")
    return out


def _existing_ancestor(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def work_dir_for(out: str | Path) -> Path:
    """Where a resumable run into ``out`` keeps its work until it is complete."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


@contextmanager
def resumable_output(out: str | Path, overwrite: bool = False, resume: bool = False, keep=lambda work: False):
    """Like ``staged_output``, but the scratch dir has a fixed name so a later run can resume
    from it. On failure it is kept if ``keep(work)`` says it holds work worth resuming."""
    out = _replaceable(out)
    work = work_dir_for(out)
    if resume and not overwrite and out.exists() and (not out.is_dir() or any(out.iterdir())) and not work.exists():
        raise BermoPruneError(f"{out} is already complete: nothing to resume (pass --overwrite to run it again)")
    check_output_dir(out, overwrite)
    if work.exists() and not resume:
        if not overwrite:
            raise BermoPruneError(f"an interrupted run into {out} left its work in {work}: "
                                  "pass --resume to continue it or --overwrite to start over")
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    except BaseException:
        if not keep(work):
            shutil.rmtree(work, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.replace(work, out)


@contextmanager
def staged_output(out: str | Path, overwrite: bool = False):
    """Yield a scratch dir beside ``out``; on success it replaces ``out``, on failure it is removed."""
    out = check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.replace(stage, out)


def quiet_libraries() -> None:
    """Silence transformers' and datasets' logging and progress bars (ours report progress)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
