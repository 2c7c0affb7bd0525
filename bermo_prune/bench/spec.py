"""Sweep specs: which runs a benchmark is made of (arch x recipe x sparsity x seed)."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bermo_prune.errors import BermoPruneError
from bermo_prune.recipes import Recipe, TrainingSpec, load_recipe, resolve_recipe

DENSE = "dense"


class ExtraSeeds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_sparsity: float = Field(ge=0, lt=1)
    seeds: list[int] = Field(min_length=1)


class StartSpec(BaseModel):
    """Fine-tune each arch densely once, and start every run of the sweep from that checkpoint."""

    model_config = ConfigDict(extra="forbid")
    seed: int = 0
    training: dict = Field(default_factory=dict, description="overrides of the default training settings")
    teacher: bool = Field(False, description="distil every pruning run from this fine-tuned start (the recipe's "
                          "distillation settings, or the defaults)")


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    checkpoint: str = "minilm-l6"
    task: str = "sst2"
    data: str | None = None
    archs: list[str] = Field(default_factory=lambda: ["bert", "bermo"], min_length=1)
    recipes: list[str] = Field(min_length=1, description="recipe files or bundled names; 'dense' = no pruning")
    sparsities: list[float] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    seeds_at_high_sparsity: ExtraSeeds | None = None
    training: dict = Field(default_factory=dict, description="overrides of the recipes' training section")
    start: StartSpec | None = None


class Run(BaseModel):
    """One prune (or dense fine-tune) run of a sweep."""

    model_config = ConfigDict(extra="forbid")
    arch: str
    recipe: str
    pruner: str
    sparsity: float
    seed: int
    # Names the run's recipe when two recipes of the sweep use the same pruner (movement with
    # accumulated and with learned scores), so that their run ids and report rows stay apart.
    label: str | None = None

    @property
    def run_id(self) -> str:
        return f"{self.arch}-{self.label or self.pruner}-s{self.sparsity:g}-seed{self.seed}"


def load_spec(path: str | Path) -> SweepSpec:
    where = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BermoPruneError(f"{where}: no such file") from None
    except UnicodeDecodeError:
        raise BermoPruneError(f"{where}: not UTF-8 text") from None
    except OSError as exc:
        raise BermoPruneError(f"{where}: cannot read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise BermoPruneError(f"{where}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(raw, dict):
        raise BermoPruneError(f"{where}: top level must be a mapping of keys")
    raw.setdefault("name", Path(path).stem)
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise BermoPruneError(f"{where}: {field}: {message}") from None
    for arch in spec.archs:
        if arch not in ("bert", "bermo"):
            raise BermoPruneError(f"{where}: archs: unknown arch {arch!r} (bert or bermo)")
    for s in spec.sparsities:
        if not 0 <= s < 1:
            raise BermoPruneError(f"{where}: sparsities: {s} is outside [0, 1)")
    for section, values in (("training", spec.training), ("start.training", spec.start.training if spec.start else {})):
        try:
            TrainingSpec.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise BermoPruneError(f"{where}: {section}.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    for name in spec.recipes:
        if name != DENSE:
            try:
                for sparsity in [None, *spec.sparsities]:  # every point of the sweep, before any run
                    spec_recipe(spec, name, sparsity)
            except BermoPruneError as exc:
                raise BermoPruneError(f"{where}: recipes: {exc}") from None
    # Runs and report rows are named by pruner, or by recipe where two recipes share a pruner: two
    # runs of one name would overwrite each other.
    names: dict[str, str] = {}
    for run in expand(spec):
        name = run.label or run.pruner
        if names.setdefault(name, run.recipe) != run.recipe:
            raise BermoPruneError(f"{where}: recipes: {names[name]} and {run.recipe} would both name their runs "
                                  f"{name!r}; give one recipe file another name")
    return spec


def spec_recipe(spec: SweepSpec, name: str, sparsity: float | None, teacher: str | None = None) -> Recipe:
    """The recipe at one sweep point, with the spec's shared training budget applied (at its own
    target sparsity when ``sparsity`` is None), distilled from ``teacher`` when one is given."""
    overrides = {f"training.{k}": v for k, v in spec.training.items()}
    if sparsity is not None:
        overrides["target_sparsity"] = sparsity
    if teacher is not None:
        overrides["training.distillation.teacher"] = teacher
    return load_recipe(resolve_recipe(name), overrides)


def spec_training(spec: SweepSpec) -> TrainingSpec:
    return TrainingSpec.model_validate(spec.training)


def start_training(spec: SweepSpec) -> TrainingSpec:
    return TrainingSpec.model_validate(spec.start.training)


def recipe_label(name: str, task: str) -> str:
    """A recipe's name without its folder, suffix and task prefix: sst2-movement-learned -> movement-learned."""
    stem = Path(name).stem
    prefix = f"{task.replace('-', '').lower()}-"
    return stem[len(prefix):] if stem.lower().startswith(prefix) and len(stem) > len(prefix) else stem


def expand(spec: SweepSpec) -> list[Run]:
    """Every run of the sweep, in a stable order (the order shards are cut from): seed-major and
    arch-innermost, so a sweep stopped half-way has whole seeds done with BERT and BERMo paired."""
    runs = []
    pruners = {name: spec_recipe(spec, name, None).pruner.name for name in spec.recipes if name != DENSE}
    shared = {p for p in pruners.values() if list(pruners.values()).count(p) > 1}
    for arch in spec.archs:
        for name in spec.recipes:
            if name == DENSE:
                runs += [Run(arch=arch, recipe=DENSE, pruner=DENSE, sparsity=0.0, seed=seed) for seed in spec.seeds]
                continue
            pruner = pruners[name]
            label = recipe_label(name, spec.task) if pruner in shared else None
            for sparsity in spec.sparsities:
                seeds = list(spec.seeds)
                extra = spec.seeds_at_high_sparsity
                if extra is not None and sparsity >= extra.min_sparsity:
                    seeds += [s for s in extra.seeds if s not in seeds]
                runs += [Run(arch=arch, recipe=name, pruner=pruner, sparsity=sparsity, seed=seed, label=label) for seed in seeds]
    order = {name: i for i, name in enumerate(spec.recipes)}
    return sorted(runs, key=lambda r: (r.seed, order[r.recipe], r.sparsity, spec.archs.index(r.arch)))
