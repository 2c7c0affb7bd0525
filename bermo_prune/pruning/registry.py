"""Name -> pruner class. Built-ins live in the top-level ``pruners`` package; third-party
packages add theirs through the ``bermo_prune.pruners`` entry-point group, so a new pruner
never needs an edit here."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from bermo_prune.errors import BermoPruneError

ENTRY_POINT_GROUP = "bermo_prune.pruners"
BUILTIN_PACKAGE = "bermo_prune.builtin_pruners"  # the top-level pruners/ folder, installed in our namespace
BUILTIN_MODULES = tuple(f"{BUILTIN_PACKAGE}.{name}" for name in ("magnitude", "random", "movement", "soft_movement", "l0", "platon", "obert"))
BUILTIN_MODULES += (f"{BUILTIN_PACKAGE}.structured", f"{BUILTIN_PACKAGE}.structured_l0")  # heads and FFN neurons

_REGISTRY: dict[str, type] = {}
_discovered = False


def register_pruner(cls: type) -> type:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not name:
        raise TypeError(f"{cls.__qualname__} needs a class attribute 'name'")
    _REGISTRY[name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        register_pruner(ep.load())


def available_pruners() -> dict[str, type]:
    _discover()
    return dict(sorted(_REGISTRY.items()))


def get_pruner_class(name: str) -> type:
    pruners = available_pruners()
    if name not in pruners:
        raise BermoPruneError(f"unknown pruner {name!r}; available: {', '.join(pruners)}")
    return pruners[name]
