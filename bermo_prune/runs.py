"""The jobs behind the CLI commands, usable from Python: fine-tune, prune, evaluate, inspect."""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
from pathlib import Path

import torch
import transformers

import bermo_prune
from bermo_prune.data import compute_metrics, data_source, get_task, load_split, tokenize_dataset
from bermo_prune.deploy import load_for_inference
from bermo_prune.errors import BermoPruneError
from bermo_prune.io import resumable_output, work_dir_for, write_json_atomic
from bermo_prune.model_card import write_model_card
from bermo_prune.models import load_classifier
from bermo_prune.models.load import COMPACT_BERT, checkpoint_arch, is_onnx_export, resolve_checkpoint
from bermo_prune.pruning.distributed import is_main_process
from bermo_prune.pruning.masks import select_modules, sparsity_report
from bermo_prune.pruning.registry import get_pruner_class
from bermo_prune.recipes import DEFAULT_INCLUDE, Recipe, TrainingSpec, recipe_to_dict
from bermo_prune.train import last_complete_checkpoint, train_and_evaluate

RUN_SETTINGS = "run.json"


def environment() -> dict:
    return {
        "bermo_prune": bermo_prune.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        # results from a GPU and from CPUs can differ in the last digits: say where a run ran
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }


def finetune(
    checkpoint: str,
    arch: str | None,
    task: str,
    out: str | Path | None,
    training: TrainingSpec,
    *,
    seed: int = 0,
    data_dir: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    resume: bool = False,
    checkpoint_every: int = 0,
    command: str | None = None,
) -> dict:
    """Dense fine-tuning; writes the checkpoint and ``metrics.json`` into ``out`` (nothing if None).
    ``command`` (the command line that asked for it) goes into the report and the model card."""
    return _run(checkpoint, arch, task, out, training, None, seed=seed, data_dir=data_dir, overwrite=overwrite,
                progress=progress, report_name="metrics.json", resume=resume, checkpoint_every=checkpoint_every,
                command=command)


def prune(
    checkpoint: str,
    recipe: Recipe,
    task: str,
    out: str | Path | None,
    *,
    arch: str | None = None,
    seed: int = 0,
    data_dir: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    compact: bool = False,
    resume: bool = False,
    checkpoint_every: int = 0,
    on_plan=None,
    command: str | None = None,
) -> dict:
    """Fine-tune with pruning per ``recipe``; writes the finalised checkpoint and
    ``pruning_report.json`` into ``out`` (nothing if None). With ``compact``, the saved
    checkpoint has its pruned heads and neurons removed (structured recipes). With
    ``checkpoint_every`` steps, a killed run can continue with ``resume``. ``on_plan(plan)``
    gets the pruner's plan in optimizer steps before the first step (main process only); the
    report records it as ``plan`` either way."""
    return _run(checkpoint, arch, task, out, recipe.training, recipe, seed=seed, data_dir=data_dir, overwrite=overwrite,
                progress=progress, report_name="pruning_report.json", compact=compact, resume=resume,
                checkpoint_every=checkpoint_every, on_plan=on_plan, command=command)


def _run(checkpoint, arch, task, out, training, recipe, *, seed, data_dir, overwrite, progress, report_name,
         compact=False, resume=False, checkpoint_every=0, on_plan=None, command=None):
    """Train in the work dir of ``out`` (or a throw-away dir when ``out`` is None); only the
    main process writes when several train together."""
    def train(workdir, resume=False):
        return _train(checkpoint, arch, task, workdir, training, recipe, seed, data_dir, progress, checkpoint_every, resume,
                      on_plan)

    if out is None:
        with tempfile.TemporaryDirectory(prefix="bermo-prune-") as scratch:
            return train(Path(scratch))[0]
    if not is_main_process():  # the other ranks keep their checkpoint files in the shared work dir
        return train(work_dir_for(out), resume)[0]
    settings = json.loads(json.dumps({
        "checkpoint": str(checkpoint), "arch": arch, "task": task, "seed": seed, "data_dir": data_dir and str(data_dir),
        "data": data_source(task, data_dir),
        "training": training.model_dump(), "recipe": recipe_to_dict(recipe) if recipe else None, "compact": compact,
    }))
    resumable = lambda work: last_complete_checkpoint(work / "trainer") is not None  # noqa: E731
    with resumable_output(out, overwrite, resume, keep=resumable) as work:
        _check_same_settings(work / RUN_SETTINGS, settings)
        write_json_atomic(work / RUN_SETTINGS, settings)
        report, model, tokenizer = train(work, resume)
        if command:
            report["command"] = command
        (work / RUN_SETTINGS).unlink()
        if compact:
            from bermo_prune.compact import compact as compact_model, structure

            model = compact_model(model)
            report["compacted"] = {"parameters": sum(p.numel() for p in model.parameters()), "layers": structure(model)}
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        write_json_atomic(work / report_name, report)
        write_model_card(work, report)
    return report


def _check_same_settings(path: Path, settings: dict) -> None:
    """A resumed run must be the run that was interrupted."""
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    keys = settings.keys() | saved.keys()
    if "data" not in saved:  # a run interrupted before the data source was recorded
        keys -= {"data"}
    differ = sorted(k for k in keys if settings.get(k) != saved.get(k))
    if differ:
        raise BermoPruneError(f"--resume: the interrupted run in {path.parent} had different {', '.join(differ)}; "
                              "pass the same options, or --overwrite to start over")


def _train(checkpoint, arch, task, workdir, training, recipe, seed, data_dir, progress, checkpoint_every=0, resume=False,
           on_plan=None):
    spec = get_task(task)
    torch.manual_seed(seed)
    model, tokenizer = load_classifier(checkpoint, arch, num_labels=spec.num_labels)
    arch = model.config.model_type
    pruner = get_pruner_class(recipe.pruner.name)(recipe) if recipe is not None else None
    label = f"{arch} {recipe.pruner.name} {recipe.target_sparsity:.0%}" if recipe else f"{arch} dense"
    result = train_and_evaluate(
        model,
        tokenizer,
        spec.name,
        training,
        workdir,
        seed=seed,
        data_dir=data_dir,
        pruner=pruner,
        divergence=recipe.divergence if recipe is not None else None,
        progress=progress and is_main_process(),
        description=label,
        checkpoint_every=checkpoint_every,
        resume=resume,
        on_plan=on_plan if is_main_process() else None,
    )
    shutil.rmtree(workdir / "trainer", ignore_errors=True)
    report = {
        "checkpoint": str(checkpoint),
        "arch": arch,
        "task": spec.name,
        "seed": seed,
        "pruner": recipe.pruner.name if recipe else None,
        "target_sparsity": recipe.target_sparsity if recipe else 0.0,
        "recipe": recipe_to_dict(recipe) if recipe else None,
        "training": training.model_dump(),
        "environment": environment(),
        **result.to_dict(),
    }
    return report, model, tokenizer


ARCH_NAMES = {"bert": "BERT", "bermo": "BERMo"}


def evaluate(checkpoint: str, task: str, *, data_dir: str | None = None, max_length: int = 128, batch_size: int = 64,
             arch: str | None = None, threads: int | None = None) -> dict:
    """Dev metrics of a saved checkpoint or ONNX export; with ``arch``, refuse a checkpoint of
    another arch. ``threads`` sets ONNX Runtime's thread count (PyTorch's is torch's setting)."""
    spec = get_task(task)
    resolved = resolve_checkpoint(checkpoint)
    if arch is not None:
        native = checkpoint_arch(resolved)
        if (native if native != COMPACT_BERT else "bert") != arch:
            name = ARCH_NAMES.get(native, "compacted BERT")
            raise BermoPruneError(f"{checkpoint} is a {name} checkpoint, not {ARCH_NAMES[arch]} (--arch {arch})")
    model, tokenizer = load_for_inference(resolved, threads)
    if model.config.num_labels != spec.num_labels:  # a head for another task would score at random
        raise BermoPruneError(f"{checkpoint} has a {model.config.num_labels}-label head; {spec.name} needs {spec.num_labels}")
    metrics = evaluate_model(model, tokenizer, spec.name, data_dir=data_dir, max_length=max_length, batch_size=batch_size)
    runtime = {"runtime": "onnxruntime", "precision": model.manifest["precision"]} if is_onnx_export(checkpoint) else {}
    return {"checkpoint": str(checkpoint), "task": spec.name, "arch": model.config.model_type, **runtime, **metrics}


def predict(checkpoint: str, texts: list[str], *, max_length: int = 128, threads: int | None = None) -> list[dict]:
    """Label and probability of each text (a tab splits a text into a sentence pair) for a PyTorch
    checkpoint or an ONNX export; a one-output (regression) head gives its score instead."""
    if not texts:
        raise BermoPruneError("give at least one text to predict")
    model, tokenizer = load_for_inference(checkpoint, threads)
    pairs = [text.split("\t", 1) for text in texts]
    if any(len(p) == 2 for p in pairs) and not all(len(p) == 2 for p in pairs):
        raise BermoPruneError("either every text is a sentence pair (split by a tab) or none is")
    columns = list(zip(*pairs))
    batch = tokenizer(*columns, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**batch).logits.float()
    if logits.shape[1] == 1:
        return [{"text": text, "score": float(score)} for text, score in zip(texts, logits[:, 0])]
    id2label = getattr(model.config, "id2label", None) or {}
    probabilities = logits.softmax(-1)
    rows = []
    for text, probs in zip(texts, probabilities):
        best = int(probs.argmax())
        rows.append({"text": text, "label": str(id2label.get(best, best)), "label_id": best,
                     "probability": float(probs[best]), "probabilities": [round(float(p), 6) for p in probs]})
    return rows


def evaluate_model(
    model, tokenizer, task: str, *, data_dir: str | None = None, max_length: int = 128, batch_size: int = 64,
    max_examples: int | None = None,
) -> dict:
    """Dev metrics of an in-memory model (plus ``examples``, the number of dev rows scored)."""
    from transformers import DataCollatorWithPadding

    spec = get_task(task)
    dev = load_split(spec.name, "dev", data_dir)
    if max_examples:
        dev = dev.select(range(min(max_examples, len(dev))))
    dev = tokenize_dataset(dev, tokenizer, spec.name, max_length)
    collate = DataCollatorWithPadding(tokenizer)
    model.eval()
    logits, labels = [], []
    with torch.inference_mode():
        for start in range(0, len(dev), batch_size):
            batch = collate([dev[i] for i in range(start, min(start + batch_size, len(dev)))])
            labels.append(batch.pop("labels"))
            batch.pop("length", None)
            logits.append(model(**batch).logits)
    metrics = compute_metrics(spec.name, torch.cat(logits).numpy(), torch.cat(labels).numpy())
    return {"examples": len(dev), **metrics}


def inspect(checkpoint: str) -> dict:
    model, _ = load_classifier(checkpoint, None, num_labels=None)
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    targets = select_modules(model, [DEFAULT_INCLUDE])
    info = {
        "checkpoint": str(checkpoint),
        "arch": model.config.model_type,
        "num_labels": model.config.num_labels,
        "parameters": total,
        "nonzero_parameters": nonzero,
        "sparsity": sparsity_report(model, targets),
    }
    if hasattr(model, "scalar_mix"):
        info["layer_weights"] = model.layer_weights()
        info["gamma"] = model.scalar_mix.gamma.item()
        info["mix_embeddings"] = model.config.bermo_mix_embeddings
    return info
