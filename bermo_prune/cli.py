"""The ``bermo-prune`` command: parse options, call :mod:`bermo_prune.runs`, render with rich."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click
from click.core import ParameterSource
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bermo_prune.errors import BermoPruneError
from bermo_prune.io import quiet_libraries

console = Console()
err_console = Console(stderr=True)

ARCH_CHOICE = click.Choice(["bert", "bermo"])
SEED = click.IntRange(0, 2**32 - 1)  # what numpy's and torch's generators take


class PositiveNumber(click.ParamType):
    """A finite number above 0 (click's FloatRange lets nan through)."""

    name = "number"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not 0 < number < float("inf"):
            self.fail(f"{value!r} is not a finite number above 0", param, ctx)
        return number


POSITIVE = PositiveNumber()

# Run statuses other than ok: off_schedule has a valid metric (the freeze set the sparsity), diverged has not.
STATUS_COLOURS = {"off_schedule": "yellow", "diverged": "red"}
DEFAULT_CHECKPOINT_EVERY = 200  # a MiniLM checkpoint with optimizer state takes ~1-2 s to write


class UserError(click.ClickException):
    exit_code = 2


class BermoGroup(click.Group):
    """Turns a BermoPruneError anywhere below into one line on stderr and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BermoPruneError as exc:
            raise UserError(str(exc)) from None


@click.group(cls=BermoGroup)
@click.version_option(package_name="bermo-prune")
def main():
    """Prune BERT and BERMo (BERT + ELMo-style scalar mix) and measure what it costs."""
    quiet_libraries()


def data_option(f):
    return click.option(
        "--data",
        "data_dir",
        type=click.Path(exists=True, file_okay=False),
        default=None,
        help="GLUE data in the original TSV layout (e.g. ../shared/data/glue). Default: $BERMO_PRUNE_DATA, "
        "then the bundled SST-2, then the hub.",
    )(f)


def task_option(f):
    return click.option("--task", default="sst2", show_default=True, help="sst2, cola, mrpc, rte or stsb.")(f)


def out_options(f):
    f = click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")(f)
    return click.option("--out", required=True, type=click.Path(), help="Output directory (written atomically).")(f)


def resume_options(f):
    f = click.option("--resume", is_flag=True,
                     help="Continue an interrupted run into --out from its last complete checkpoint.")(f)
    return click.option("--checkpoint-every", type=click.IntRange(min=0), default=DEFAULT_CHECKPOINT_EVERY,
                        show_default=True, help="Write a resumable checkpoint every N steps (0: never).")(f)


@main.command()
@click.option("--model", "checkpoint", default="minilm-l6", show_default=True, help="Local dir, hub id, or alias.")
@click.option("--arch", type=ARCH_CHOICE, default=None, help="Default: the checkpoint's own arch (bert for minilm-l6).")
@task_option
@data_option
@click.option("--epochs", type=POSITIVE, default=3.0, show_default=True)
@click.option("--lr", type=POSITIVE, default=5e-5, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--max-length", type=click.IntRange(8, 512), default=64, show_default=True)
@click.option("--max-train-samples", type=click.IntRange(min=1), default=None, help="Deterministic subsample by seed.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@out_options
@resume_options
def finetune(checkpoint, arch, task, data_dir, epochs, lr, batch_size, max_length, max_train_samples, seed, out, overwrite,
             resume, checkpoint_every):
    """Dense fine-tuning of BERT or BERMo; saves the checkpoint and metrics.json."""
    from bermo_prune import runs
    from bermo_prune.pruning.distributed import is_main_process
    from bermo_prune.recipes import TrainingSpec

    training = TrainingSpec(
        epochs=epochs, learning_rate=lr, batch_size=batch_size, max_length=max_length, max_train_samples=max_train_samples
    )
    report = runs.finetune(checkpoint, arch, task, out, training, seed=seed, data_dir=data_dir, overwrite=overwrite,
                           resume=resume, checkpoint_every=checkpoint_every, command=_invocation())
    if is_main_process():
        _print_run_table([report])
        console.print(f"saved to [bold]{out}[/]")


@main.command(name="prune")
@click.argument("checkpoint")
@click.option("--recipe", "recipe_path", required=True, help="Recipe YAML file, or the name of a bundled recipe.")
@click.option("--arch", type=ARCH_CHOICE, default=None, help="Default: the checkpoint's own arch.")
@task_option
@data_option
@click.option("--target-sparsity", type=float, default=None, help="Override the recipe's target sparsity.")
@click.option("--epochs", type=float, default=None, help="Override training.epochs.")
@click.option("--max-train-samples", type=int, default=None, help="Override training.max_train_samples.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--teacher", default=None, help="Distil from this fine-tuned checkpoint (sets training.distillation.teacher).")
@click.option("--compact", "compact_model", is_flag=True, help="Save with pruned heads/neurons removed (structured recipes).")
@out_options
@resume_options
def prune_command(
    checkpoint, recipe_path, arch, task, data_dir, target_sparsity, epochs, max_train_samples, seed, teacher, compact_model, out,
    overwrite, resume, checkpoint_every,
):
    """Fine-tune with pruning per a recipe; saves a plain checkpoint with real zeros and pruning_report.json."""
    from bermo_prune import runs
    from bermo_prune.pruning.distributed import is_main_process
    from bermo_prune.recipes import load_recipe, resolve_recipe

    overrides = {
        key: value
        for key, value in {
            "target_sparsity": target_sparsity,
            "training.epochs": epochs,
            "training.max_train_samples": max_train_samples,
            "training.distillation.teacher": teacher,
        }.items()
        if value is not None
    }
    recipe = load_recipe(resolve_recipe(recipe_path), overrides)
    report = runs.prune(
        checkpoint, recipe, task, out, arch=arch, seed=seed, data_dir=data_dir, overwrite=overwrite, compact=compact_model,
        resume=resume, checkpoint_every=checkpoint_every, on_plan=_print_plan, command=_invocation(),
    )
    if not is_main_process():
        return
    _print_run_table([report])
    if "compacted" in report:
        console.print(f"compacted to {report['compacted']['parameters']:,} parameters")
    if report["status"] != "ok":
        colour = STATUS_COLOURS.get(report["status"], "red")
        err_console.print(f"[bold {colour}]{report['status'].replace('_', ' ')}[/]: {escape(str(report['reason']))}")
    console.print(f"saved to [bold]{out}[/]")


DEMO_RECIPE = "sst2-demo"


@main.command()
@click.option("--model", "checkpoint", default="minilm-l6", show_default=True, help="Local dir, hub id, or alias.")
@click.option("--recipe", "recipe_path", default=DEMO_RECIPE, show_default=True, help="Recipe file or bundled name.")
@data_option
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(), help="Replaced on every run.")
def demo(checkpoint, recipe_path, data_dir, seed, out):
    """The default job: prune BERT and BERMo from the same checkpoint on SST-2 and compare."""
    from bermo_prune import runs
    from bermo_prune.recipes import load_recipe, resolve_recipe

    recipe = load_recipe(resolve_recipe(recipe_path))
    t = recipe.training
    console.print(
        f"[bold]{recipe.name}[/]: {recipe.pruner.name} pruning to {recipe.target_sparsity:.0%} of the encoder "
        f"Linear weights; SST-2, {t.max_train_samples or 'all'} training examples x {t.epochs:g} epochs, seed {seed}"
    )
    reports = [
        runs.prune(checkpoint, recipe, "sst2", Path(out) / arch, arch=arch, seed=seed, data_dir=data_dir, overwrite=True,
                   on_plan=_print_plan)
        for arch in ("bert", "bermo")
    ]
    _print_run_table(reports)
    console.print(f"checkpoints and pruning_report.json under [bold]{out}[/]")


@main.command()
@click.argument("checkpoint")
@task_option
@data_option
@click.option("--max-length", type=click.IntRange(8, 512), default=128, show_default=True)
@click.option("--arch", type=ARCH_CHOICE, default=None, help="Refuse a checkpoint of any other arch.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime threads (an ONNX export).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def evaluate(checkpoint, task, data_dir, max_length, arch, threads, as_json):
    """Evaluate a checkpoint or an ONNX export on the task's dev split."""
    from bermo_prune import runs

    result = runs.evaluate(checkpoint, task, data_dir=data_dir, max_length=max_length, arch=arch, threads=threads)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    runtime = f", ONNX Runtime {result['precision']}" if "runtime" in result else ""
    table = Table(title=f"{result['task']} dev ({result['examples']} examples{runtime})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.items():
        if isinstance(value, float):
            table.add_row(key, f"{value:.4f}")
    console.print(table)


@main.command()
@click.argument("checkpoint")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def inspect(checkpoint, as_json):
    """Parameter counts, per-layer sparsity and, for BERMo, the learned layer weights."""
    from bermo_prune import runs

    info = runs.inspect(checkpoint)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    sparsity = info["sparsity"]
    console.print(
        f"[bold]{info['checkpoint']}[/] ({info['arch']}): {info['parameters']:,} parameters, "
        f"{info['nonzero_parameters']:,} non-zero; encoder sparsity {sparsity['encoder']:.2%}, "
        f"encoder Linear weights {sparsity['targeted']:.2%}"
    )
    table = Table(title="per-layer sparsity")
    table.add_column("module")
    table.add_column("sparsity", justify="right")
    for name, value in sparsity["per_layer"].items():
        table.add_row(name, f"{value:.2%}")
    console.print(table)
    if "layer_weights" in info:
        mix = Table(title=f"BERMo layer weights (gamma = {info['gamma']:.4f})")
        mix.add_column("state")
        mix.add_column("weight", justify="right")
        first = 0 if info["mix_embeddings"] else 1
        for i, weight in enumerate(info["layer_weights"], start=first):
            mix.add_row("embeddings" if i == 0 else f"layer {i}", f"{weight:.4f}")
        console.print(mix)


@main.command()
def pruners():
    """List the available pruners (built-in and from the bermo_prune.pruners entry points)."""
    from bermo_prune.pruning.registry import available_pruners

    table = Table(title="pruners")
    table.add_column("name")
    table.add_column("class")
    table.add_column("options")
    for name, cls in available_pruners().items():
        table.add_row(name, f"{cls.__module__}.{cls.__qualname__}", ", ".join(cls.Options.model_fields) or "-")
    console.print(table)


@main.group(cls=BermoGroup)
def recipe():
    """Check and plot recipe files."""


@recipe.command("check")
@click.argument("path")
@task_option
@click.option("--train-examples", type=click.IntRange(min=1), default=None,
              help="Training examples the data has (default: the task's GLUE train split); "
              "training.max_train_samples caps it.")
def recipe_check(path, task, train_examples):
    """Validate a recipe; prints a summary and the pruning plan in optimizer steps, or a one-line error."""
    from bermo_prune.data import get_task
    from bermo_prune.pruning.registry import get_pruner_class
    from bermo_prune.recipes import load_recipe, resolve_recipe

    r = load_recipe(resolve_recipe(path))
    s, t = r.schedule, r.training
    samples = f"{t.max_train_samples:,} examples" if t.max_train_samples else "all examples"
    distillation = (
        f"; distilled from {t.distillation.teacher} (alpha {t.distillation.alpha:g}, T {t.distillation.temperature:g}"
        + (f", hidden states x {t.distillation.hidden_weight:g}" if t.distillation.hidden_weight else "") + ")"
        if t.distillation else ""
    )
    console.print(
        f"[green]ok[/] {path}: {r.pruner.name} to {r.target_sparsity:.0%} ({r.scope}), {s.shape} schedule "
        f"over {s.start:.0%}-{s.end:.0%} of training, update every {s.update_every} steps; "
        f"{t.epochs:g} epochs of {samples}, lr {t.learning_rate:g}, bs {t.batch_size}{distillation}"
    )
    spec = get_task(task)
    available = train_examples or spec.train_examples
    examples = min(available, t.max_train_samples or available)
    if t.max_train_samples and t.max_train_samples <= available:
        source = "training.max_train_samples"
    elif train_examples:
        source = "--train-examples"
    else:
        source = f"assumed: all of {spec.dirname}'s GLUE train split; --train-examples N for other data"
    pruner = get_pruner_class(r.pruner.name)(r)
    pruner.set_total_steps(t.total_steps(examples))
    _print_plan(pruner.plan(), f"{examples:,} examples ({source}), one process")


def _invocation() -> str:
    """The command line of the running command, as the user typed it (the options they set)."""
    ctx = click.get_current_context()
    parts = ["bermo-prune", ctx.info_name]
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name) != ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[param.name]
        if isinstance(param, click.Argument):
            parts += [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
        elif getattr(param, "is_flag", False):
            parts.append(param.opts[0] if value else (param.secondary_opts or param.opts)[0])
        else:
            parts += [param.opts[0], str(value)]
    return shlex.join(parts)


def _steps(count: int, noun: str = "step") -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _print_plan(plan: dict, assumed: str = "") -> None:
    """The pruning plan in optimizer steps (Pruner.plan), its warnings in yellow."""
    start, end = plan["window"]
    learned = plan["score_steps"]
    scores = ("importance not learned (no score training before the first mask)" if learned is None
              else f"scores/gates train {_steps(learned)} before the first mask")
    where = f" for {assumed}" if assumed else ""
    console.print(f"plan{where}: {_steps(plan['total_steps'], 'optimizer step')}, pruning window steps {start:,}-{end:,} "
                  f"({_steps(plan['window_steps'])}); {scores}")
    for warning in plan["warnings"]:
        console.print(f"[yellow]warning: {escape(warning)}[/]")


@recipe.command("plot")
@click.argument("path")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="PNG file to write.")
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True, help="Total training steps to draw.")
def recipe_plot(path, output, steps):
    """Plot sparsity (and lambda) against step."""
    from bermo_prune.recipes import load_recipe, plot_recipe, resolve_recipe

    plot_recipe(load_recipe(resolve_recipe(path)), steps, output)
    console.print(f"wrote {output}")


@main.command()
@click.argument("spec_path", metavar="SPEC.yaml")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Results dir (resumed if it exists).")
@click.option("--shard", default="1/1", show_default=True, help="Run only shard i of n (array jobs).")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Parallel local runs.")
@click.option("--retry-crashed", is_flag=True, help="Run again the runs recorded as crashed.")
@click.option("--new-start", is_flag=True,
              help="Train the spec's dense start again when it is not on this disk but runs made from it are.")
@click.option("--report/--no-report", "make_report", default=True, show_default=True, help="Write the report when done.")
def bench(spec_path, out, shard, jobs, retry_crashed, new_start, make_report):
    """Run a sweep (arch x recipe x sparsity x seed): one result file per run, resumable and shardable."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from bermo_prune.bench.runner import parse_shard, run_sweep

    shard_pair = parse_shard(shard)
    progress = Progress(
        TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[last]}"),
        TimeElapsedColumn(), TimeRemainingColumn(),
    )
    state = {}

    def on_start(todo):
        console.print(f"{len(todo)} runs to do in shard {shard} (finished runs are skipped)")
        state["task"] = progress.add_task("sweep", total=len(todo), last="")

    def on_done(run, result):
        value = (result.get("metrics") or {}).get(result.get("main_metric"))
        shown = f"{value:.4f}" if isinstance(value, float) else "-"
        progress.update(state["task"], advance=1, last=f"{run.run_id}: {result['status']} {shown}")

    with progress:
        run_sweep(spec_path, out, shard=shard_pair, jobs=jobs, retry_crashed=retry_crashed, new_start=new_start,
                  on_start=on_start, on_done=on_done)
    if make_report:
        _report(out, Path(out) / "report")


@main.command()
@click.argument("results_dir", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", "report_dir", required=True, type=click.Path(file_okay=False), help="Report folder.")
def report(results_dir, report_dir):
    """Sparsity-accuracy report of a results dir: Markdown, CSV, JSON and PNG plots."""
    _report(results_dir, report_dir)


def _report(results_dir, report_dir) -> None:
    from bermo_prune.bench.report import write_report

    files = write_report(results_dir, report_dir)
    console.print(Path(files["markdown"]).read_text())
    console.print("wrote " + ", ".join(str(p) for p in files.values()))


def run_table(reports: list[dict]) -> Table:
    """The dev results of runs, one line each in an 80-column terminal (the metric's name is in the
    title; columns are set apart by one space, without rules)."""
    metrics = "/".join(sorted({r["main_metric"] for r in reports}))
    table = Table(title=f"dev results ({metrics})", box=box.SIMPLE_HEAD, padding=0, show_edge=False)
    for column in ("arch", "pruner", "target", "sparsity", "dev", "status", "steps", "ex/s"):
        table.add_column(column, justify="left" if column in ("arch", "pruner", "status") else "right", no_wrap=True)
    for r in reports:
        main_value = r["metrics"].get(r["main_metric"])
        table.add_row(
            r["arch"],
            r["pruner"] or "dense",
            f"{r['target_sparsity']:.0%}",
            f"{r['sparsity']['targeted']:.2%}",
            f"{main_value:.4f}" if main_value is not None else "-",
            r["status"] if r["status"] == "ok" else f"[{STATUS_COLOURS.get(r['status'], 'red')}]{r['status']}[/]",
            str(r["steps"]),
            f"{r['train_examples_per_s']:.0f}",
        )
    return table


def _print_run_table(reports: list[dict]) -> None:
    console.print(run_table(reports))


@main.command()
@click.argument("checkpoint")
@out_options
def compact(checkpoint, out, overwrite):
    """Remove pruned attention heads and FFN neurons for real: a smaller, faster checkpoint."""
    from bermo_prune.compact import compact_checkpoint

    report = compact_checkpoint(checkpoint, out, overwrite=overwrite, command=_invocation())
    table = Table(title=f"compacted {report['arch']}: {report['parameters_before']:,} -> {report['parameters_after']:,} parameters")
    for column in ("layer", "heads", "intermediate"):
        table.add_column(column, justify="right")
    for i, layer in enumerate(report["layers"]):
        table.add_row(str(i), f"{layer['heads_before']} -> {layer['heads_after']}",
                      f"{layer['intermediate_before']} -> {layer['intermediate_after']}")
    console.print(table)
    console.print(f"saved to [bold]{out}[/]")


@main.command(name="export")
@click.argument("checkpoint")
@click.option("--format", "fmt", type=click.Choice(["sparse", "dense", "onnx"]), default="sparse", show_default=True,
              help="sparse: bitmask + non-zero values of a checkpoint; dense: a sparse export back to a plain "
              "checkpoint; onnx: an ONNX model checked against PyTorch, for ONNX Runtime.")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="With --format onnx: dynamic INT8 quantisation of the Linear layers (ONNX Runtime).")
@click.option("--fuse", is_flag=True, help="With --format onnx: ONNX Runtime's transformer fusions (one Attention "
              "node per layer, EmbedLayerNormalization, SkipLayerNormalization, BiasGelu).")
@out_options
def export_command(checkpoint, fmt, quantize, fuse, out, overwrite):
    """Sparse export of a pruned checkpoint (size ~ 1 - sparsity), its lossless re-import, or ONNX."""
    from bermo_prune import export

    if (quantize or fuse) and fmt != "onnx":
        raise UserError(f"{'--quantize' if quantize else '--fuse'} needs --format onnx")
    if fmt == "onnx":
        from bermo_prune.deploy import export_onnx

        manifest = export_onnx(checkpoint, out, precision=quantize or "fp32", fuse=fuse, overwrite=overwrite)
        check = manifest["check"]
        closeness = (f"max |logit difference| {check['max_abs_diff']:.2g} (tolerance {check['tolerance']:g})"
                     if "tolerance" in check else
                     f"max |logit difference| {check['relative_diff']:.1%} of the largest logit")
        fused = (", fused: " + (", ".join(f"{n} {op}" for op, n in manifest["fused_ops"].items()) or "nothing")) if fuse else ""
        console.print(f"{manifest['precision']} ONNX model{fused}, {manifest['bytes'] / 1e6:.1f} MB, matches PyTorch on "
                      f"{check['examples']} sentences: {closeness}; saved to [bold]{out}[/]")
        if not check.get("labels_kept", True):
            err_console.print("[yellow]warning:[/] INT8 changed a predicted label on the check sentences; "
                              f"measure its accuracy: bermo-prune evaluate {shlex.quote(str(out))} --task ...")
        return
    if fmt == "dense":
        result = export.export_dense(checkpoint, out, overwrite=overwrite)
        console.print(f"rebuilt {result['tensors']} tensors ({result['dense_bytes']:,} bytes) into [bold]{out}[/]")
        return
    manifest = export.export_sparse(checkpoint, out, overwrite=overwrite)
    stored, dense = manifest["payload"]["bytes"], manifest["dense_bytes"]
    console.print(f"{len(manifest['tensors'])} tensors: {dense:,} bytes dense -> {stored:,} bytes sparse "
                  f"({stored / dense:.1%}); saved to [bold]{out}[/]")


@main.command()
@click.argument("checkpoint")
@click.argument("texts", nargs=-1, required=True)
@click.option("--max-length", type=click.IntRange(8, 512), default=128, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime threads (an ONNX export).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def predict(checkpoint, texts, max_length, threads, as_json):
    """Label and probability for each text, from a checkpoint or an ONNX export.

    A tab inside a text makes it a sentence pair (MRPC, RTE, STS-B)."""
    from bermo_prune import runs

    rows = runs.predict(checkpoint, list(texts), max_length=max_length, threads=threads)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(box=box.SIMPLE)
    table.add_column("text")
    if "score" in rows[0]:
        table.add_column("score", justify="right")
        for row in rows:
            table.add_row(escape(row["text"]), f"{row['score']:.4f}")
    else:
        table.add_column("label")
        table.add_column("probability", justify="right")
        for row in rows:
            table.add_row(escape(row["text"]), escape(row["label"]), f"{row['probability']:.3f}")
    console.print(table)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
