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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True, default=_jsonable)
            fh.write("\n")
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
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise BermoPruneError(f"{out} already exists and is not empty; pass --overwrite to replace it")
    ancestor = _existing_ancestor(out.resolve().parent)
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK):
        raise BermoPruneError(f"{out}: cannot write into {ancestor}")
    return out


def _existing_ancestor(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


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
