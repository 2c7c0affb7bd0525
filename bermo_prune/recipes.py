"""Pruning recipes: YAML files saying what to prune, how far, on which schedule, and how to train.

Every section is a pydantic model with ``extra="forbid"`` so a typo is an error rather than a
silently ignored setting. :func:`load_recipe` turns any problem into a one-line
:class:`BermoPruneError` naming the file and the field.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bermo_prune.errors import BermoPruneError
from bermo_prune.pruning.registry import get_pruner_class
from bermo_prune.pruning.schedules import Schedule, Shape

# The Linear layers of every BERT encoder block; embeddings, pooler and classifier stay dense.
DEFAULT_INCLUDE = (
    r"encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense"
    r"|intermediate\.dense|output\.dense)$"
)


class _FieldError(ValueError):
    """Raised by validators for problems whose field path pydantic cannot know by itself
    (cross-field checks, pruner options validated by another model). Paths are relative to
    the model whose validator raises."""

    def __init__(self, *problems: tuple[str, str]):
        super().__init__("; ".join(f"{path}: {message}" for path, message in problems))
        self.problems = problems


def _compiles(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"invalid regex {pattern!r}: {e}") from None
    return pattern


Regex = Annotated[str, AfterValidator(_compiles)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PrunerSpec(_Spec):
    name: str
    # The raw mapping from the file becomes an instance of the pruner's own Options model.
    options: Any = Field(default_factory=dict)

    @model_validator(mode="after")
    def _validate_options(self) -> PrunerSpec:
        try:
            options_model = get_pruner_class(self.name).Options
        except BermoPruneError as e:
            raise _FieldError(("name", str(e))) from None
        if not isinstance(self.options, options_model):
            try:
                self.options = options_model.model_validate({} if self.options is None else self.options)
            except ValidationError as e:
                raise _FieldError(*((_join("options", path), msg) for path, msg in _problems(e))) from None
        return self


class TargetSpec(_Spec):
    include: list[Regex] = Field(default_factory=lambda: [DEFAULT_INCLUDE], min_length=1)
    exclude: list[Regex] = Field(default_factory=list)


class ScheduleSpec(_Spec):
    shape: Shape = "cubic"
    start: Fraction = 0.1
    end: Fraction = 0.7
    update_every: int = Field(10, ge=1)
    initial_sparsity: float = Field(0.0, ge=0, lt=1)


class PenaltySpec(_Spec):
    value: float = Field(ge=0)
    shape: Shape = "linear"
    start: Fraction | None = None  # None: same as schedule.start
    end: Fraction | None = None  # None: same as schedule.end


class DistillationSpec(_Spec):
    """Knowledge distillation from a fine-tuned teacher (Hinton et al. 2015), as CoFi and
    nn_pruning use to win back the accuracy pruning costs."""

    teacher: str = Field(min_length=1, description="fine-tuned checkpoint (dir, hub id) of the same task and tokenizer")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the distillation loss; the task loss gets 1 - alpha")
    temperature: float = Field(2.0, gt=0)
    # TinyBERT's layer loss with the identity layer map: head and neuron pruning keep depth and width.
    hidden_weight: float = Field(0.0, ge=0, description="weight of the mean squared error between the student's "
                                 "and the teacher's encoder layer outputs (real tokens), added to the loss")


class TrainingSpec(_Spec):
    epochs: float = Field(3.0, gt=0)
    learning_rate: float = Field(5e-5, gt=0)
    batch_size: int = Field(32, ge=1)
    max_length: int = Field(64, ge=8, le=512)
    max_train_samples: int | None = Field(None, ge=1)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    # BERMo's scalar mix (N+1 logits and gamma) learns at its own rate; BERT has no such params.
    mix_learning_rate: float = Field(5e-3, gt=0)
    distillation: DistillationSpec | None = None

    def total_steps(self, examples: int) -> int:
        """Optimizer steps of a run over ``examples`` training examples in one process (under
        torch.distributed each process takes its share of every epoch: fewer steps)."""
        batches = math.ceil(examples / self.batch_size)
        return max(1, math.ceil(batches * self.epochs))

    @field_validator("distillation", mode="before")
    @classmethod
    def _teacher_needed(cls, value):
        if value is False:
            return None
        if value is True:
            raise ValueError("needs a teacher: {teacher: DIR, alpha: 0.5, temperature: 2.0}")
        return value


class DivergenceSpec(_Spec):
    min_metric: float | None = None
    collapse_fraction: float = Field(0.95, gt=0.5, le=1)


class Recipe(_Spec):
    name: str = Field(min_length=1)
    description: str = ""
    pruner: PrunerSpec
    target_sparsity: float = Field(ge=0, lt=1)
    scope: Literal["global", "per_layer"] = "global"
    targets: TargetSpec = Field(default_factory=TargetSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    penalty: PenaltySpec | None = None
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    divergence: DivergenceSpec = Field(default_factory=DivergenceSpec)

    @model_validator(mode="after")
    def _check_consistency(self) -> Recipe:
        s, p = self.schedule, self.penalty
        problems = _window_problems("schedule", s.shape, s.start, s.end)
        if p is not None and not problems:  # a penalty inheriting a bad window is reported once
            inherited = "; unset penalty.start/end come from schedule" if p.start is None or p.end is None else ""
            problems += _window_problems("penalty", p.shape, *self._penalty_window(), note=inherited)
        if s.initial_sparsity > self.target_sparsity:
            problems.append((
                "schedule.initial_sparsity",
                f"must be <= target_sparsity (got {s.initial_sparsity} > {self.target_sparsity})",
            ))
        if problems:
            raise _FieldError(*problems)
        return self

    def _penalty_window(self) -> tuple[float, float]:
        p, s = self.penalty, self.schedule
        return (s.start if p.start is None else p.start), (s.end if p.end is None else p.end)

    def sparsity_schedule(self, total_steps: int) -> Schedule:
        s = self.schedule
        return Schedule.from_fractions(s.shape, s.initial_sparsity, self.target_sparsity, s.start, s.end, total_steps)

    def penalty_schedule(self, total_steps: int) -> Schedule | None:
        """Lambda ramps from 0 to ``penalty.value``; None when the recipe has no penalty."""
        if self.penalty is None:
            return None
        start, end = self._penalty_window()
        return Schedule.from_fractions(self.penalty.shape, 0.0, self.penalty.value, start, end, total_steps)


def _window_problems(section: str, shape: str, start: float, end: float, note: str = "") -> list[tuple[str, str]]:
    if shape == "constant" or end > start or (shape == "one_shot" and end == start):
        return []
    relation = "at or after" if shape == "one_shot" else "after"
    return [(f"{section}.end", f"must be {relation} {section}.start (got start={start}, end={end}{note})")]


# --- loading ---------------------------------------------------------------------------------


def recipe_dirs() -> list[Path]:
    """Where bundled recipes live: inside an installed wheel, or the checkout's ``recipes/``."""
    package = Path(__file__).resolve().parent
    return [package / "builtin_recipes", package.parent / "recipes"]


def resolve_recipe(name: str | Path) -> Path:
    """A recipe file path, or the name of a bundled recipe (``sst2-movement``)."""
    path = Path(name)
    # A folder of that name (an earlier --out, say) is not a recipe: look for the bundled one.
    if path.is_file() or path.suffix in (".yaml", ".yml") and len(path.parts) > 1:
        return path
    for folder in recipe_dirs():
        for candidate in (folder / f"{name}.yaml", folder / str(name)):
            if candidate.is_file():
                return candidate
    return path  # load_recipe reports the missing file


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read and validate a recipe. ``overrides`` maps dotted keys (``"training.epochs"``) to
    values; they are applied before validation, so they are checked like the file itself."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BermoPruneError(f"{where}: no such file") from None
    except OSError as e:
        raise BermoPruneError(f"{where}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise BermoPruneError(f"{where}: not UTF-8 text") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise BermoPruneError(f"{where}: not valid YAML ({_yaml_problem(e)})") from None
    if raw is None:
        raise BermoPruneError(f"{where}: empty recipe")
    if not isinstance(raw, dict):
        raise BermoPruneError(f"{where}: top level must be a mapping of keys (got a {type(raw).__name__})")
    own_target = raw.get("target_sparsity")
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value, where)
    raw.setdefault("name", Path(path).stem)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        raise BermoPruneError(f"{where}: " + "; ".join(f"{p}: {m}" for p, m in _problems(e))) from None
    _refuse_ignored_target(recipe, own_target, overrides or {}, where)
    return recipe


def _refuse_ignored_target(recipe: Recipe, own_target, overrides: dict, where: str) -> None:
    """A structured recipe that fixes both its head and its neuron fraction prunes those whatever
    ``target_sparsity`` says: an override of the target would be recorded, and silently not done."""
    options = recipe.pruner.options
    fixed = [f"{k} {getattr(options, k)}" for k in ("head_sparsity", "neuron_sparsity") if getattr(options, k, None) is not None]
    if "target_sparsity" in overrides and len(fixed) == 2 and overrides["target_sparsity"] != own_target:
        raise BermoPruneError(
            f"{where}: the recipe fixes {' and '.join(fixed)}, which decide what is pruned, so a target_sparsity of "
            f"{overrides['target_sparsity']} would be ignored; override pruner.options.head_sparsity and "
            "neuron_sparsity in a copy of the recipe instead, or remove them from it")


def _set_dotted(raw: dict, key: str, value: Any, where: str) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for depth, part in enumerate(parents, start=1):
        child = node.get(part)
        if child is None:  # a missing or empty section: overriding a key creates it
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise BermoPruneError(f"{where}: override {key}: {'.'.join(parents[:depth])} is not a mapping")
        node = child
    node[leaf] = value


def _yaml_problem(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    text = f"line {mark.line + 1}: {problem}" if mark is not None else problem
    return " ".join(text.split())


# --- pydantic errors -> "field.path: message" ------------------------------------------------

_OPERATORS = {  # longest first: "greater than" is a prefix of "greater than or equal to"
    "greater than or equal to": ">=",
    "less than or equal to": "<=",
    "greater than": ">",
    "less than": "<",
}


def _problems(error: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for err in error.errors():
        path = ".".join(str(part) for part in err["loc"])
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, _FieldError):
            problems += [(_join(path, sub), message) for sub, message in cause.problems]
        else:
            problems.append((path, _message(err)))
    return problems


def _message(err: dict) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required"
    if kind == "value_error":
        return str(err["ctx"]["error"])
    if kind in ("too_short", "string_too_short") and err["ctx"]["min_length"] == 1:
        return "must not be empty"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        message = "must be a mapping"
    else:
        message = err["msg"].replace("Input should be", "must be")
        for words, operator in _OPERATORS.items():
            message = message.replace(words, operator)
    got = repr(err["input"])
    return f"{message} (got {got if len(got) <= 60 else got[:57] + '...'})"


def _join(*parts: str) -> str:
    return ".".join(part for part in parts if part)


# --- export ----------------------------------------------------------------------------------


def recipe_to_dict(recipe: Recipe) -> dict:
    """Plain JSON-able dict of the validated recipe (defaults and pruner options included)."""
    return recipe.model_dump(mode="json")


def plot_recipe(recipe: Recipe, total_steps: int, path: str | Path) -> None:
    """Save a PNG of target sparsity (and penalty lambda, if any) against the optimizer step."""
    # Figure without pyplot: no global backend state, safe in scripts and tests alike.
    from matplotlib.figure import Figure

    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1 (got {total_steps})")
    sparsity = recipe.sparsity_schedule(total_steps)
    penalty = recipe.penalty_schedule(total_steps)
    boundaries = {sparsity.start_step, sparsity.end_step}
    if penalty is not None:
        boundaries |= {penalty.start_step, penalty.end_step}
    stride = max(1, total_steps // 1000)
    steps = sorted({*range(0, total_steps + 1, stride), total_steps, *(b for b in boundaries if b <= total_steps)})

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    phases = [
        (0, sparsity.start_step, "tab:gray", "dense warm-up"),
        (sparsity.start_step, sparsity.end_step, "tab:orange", "pruning window"),
        (sparsity.end_step, total_steps, "tab:green", "cool-down (masks fixed)"),
    ]
    for begin, end, colour, label in phases:
        if end > begin:
            ax.axvspan(begin, end, color=colour, alpha=0.12, label=label)
    # steps-post: a value holds until the next step, which also draws one-shot jumps as jumps.
    ax.plot(steps, [sparsity(s) for s in steps], color="tab:blue", drawstyle="steps-post", label="target sparsity")
    ax.set(xlim=(0, total_steps), ylim=(0, 1), xlabel="optimizer step", ylabel="sparsity")
    ax.set_title(f"{recipe.name}: {recipe.pruner.name}, {sparsity.shape} to {recipe.target_sparsity:.0%}")
    handles, labels = ax.get_legend_handles_labels()
    legend_axes = ax
    if penalty is not None:
        twin = ax.twinx()
        twin.plot(steps, [penalty(s) for s in steps], color="tab:red", linestyle="--", drawstyle="steps-post",
                  label=f"penalty lambda ({penalty.shape})")
        twin.set_ylabel("penalty lambda")
        twin.set_ylim(bottom=0)
        more_handles, more_labels = twin.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
        legend_axes = twin  # drawn last, so the penalty curve cannot hide the legend
    legend_axes.legend(handles, labels, loc="lower right", fontsize="small")
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    except (ValueError, OSError) as exc:  # a format matplotlib does not write, a path it cannot write to
        raise BermoPruneError(f"cannot write {path}: {str(exc).splitlines()[0]}") from None
