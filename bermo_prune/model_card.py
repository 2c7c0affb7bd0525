"""A Hugging Face model card (``README.md``) for every checkpoint bermo-prune writes, so that a
pruned model explains itself when it is shared: YAML metadata (base model, task, metrics,
sparsity, status) that the Hub reads, and a body with the recipe, the command, the per-layer
sparsity and the run's status."""

from __future__ import annotations

from pathlib import Path

import yaml

from bermo_prune.data import get_task

CARD = "README.md"


def _command(report: dict) -> str:
    return report.get("command") or "# from bermo_prune's Python API: see the recipe and settings below"


def metadata(report: dict) -> dict:
    task = get_task(report["task"])
    metrics = [{"type": name, "value": round(float(value), 4)} for name, value in report.get("metrics", {}).items()
               if isinstance(value, (int, float))]
    sparsity = (report.get("sparsity") or {}).get("targeted")
    return {
        "library_name": "transformers",
        "base_model": str(report["checkpoint"]),
        "pipeline_tag": "text-classification",
        "tags": ["bermo-prune", report["arch"], *(["pruned", report["pruner"]] if report.get("pruner") else [])],
        "datasets": ["nyu-mll/glue"],
        "model-index": [{
            "name": f"{report['arch']}-{report.get('pruner') or 'dense'}-{report['task']}",
            "results": [{
                "task": {"type": "text-classification"},
                "dataset": {"name": f"GLUE {task.dirname}", "type": "nyu-mll/glue", "config": task.hub_config,
                            "split": "validation"},
                "metrics": metrics,
            }],
        }],
        "bermo_prune": {
            "arch": report["arch"],
            "pruner": report.get("pruner"),
            "target_sparsity": report.get("target_sparsity"),
            "sparsity": sparsity,
            "status": report["status"],
            "seed": report.get("seed"),
            "steps": report.get("steps"),
        },
    }


def model_card(report: dict) -> str:
    meta = metadata(report)
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", ""]
    title = f"{report['arch'].upper() if report['arch'] == 'bert' else 'BERMo'} on {meta['model-index'][0]['results'][0]['dataset']['name']}"
    pruned = report.get("pruner")
    lines += [f"# {title}" + (f", {pruned}-pruned" if pruned else " (dense fine-tune)"), ""]
    lines += [f"Fine-tuned from `{report['checkpoint']}` by bermo-prune; seed {report.get('seed')}, "
              f"{report.get('steps')} optimizer steps on {report.get('train_examples')} training examples.", ""]
    status = report["status"] + (f": {report['reason']}" if report.get("reason") else "")
    lines += [f"**Status: {status}.**", ""]
    lines += ["| dev metric | value |", "|---|---|"]
    lines += [f"| {m['type']} | {m['value']} |" for m in meta["model-index"][0]["results"][0]["metrics"]]
    lines += ["", "## How it was made", "", "```bash", _command(report), "```", ""]
    if report.get("recipe"):
        lines += ["Recipe:", "", "```yaml", yaml.safe_dump(report["recipe"], sort_keys=False).rstrip(), "```", ""]
    per_layer = (report.get("sparsity") or {}).get("per_layer") or {}
    if per_layer:
        lines += ["## Sparsity of the pruned weights", "",
                  f"{report['sparsity']['targeted']:.2%} of the targeted weights are zero "
                  f"({report['sparsity'].get('encoder', 0):.2%} of the encoder).", "",
                  "| module | sparsity |", "|---|---|"]
        lines += [f"| {name} | {value:.2%} |" for name, value in sorted(per_layer.items())]
        lines.append("")
    if report.get("compacted"):
        lines += [f"Compacted: pruned heads and neurons removed, {report['compacted']['parameters']:,} parameters.", ""]
    env = report.get("environment") or {}
    if env:
        lines += ["Versions: " + ", ".join(f"{k} {v}" for k, v in env.items()) + ".", ""]
    return "\n".join(lines)


def write_model_card(folder: str | Path, report: dict) -> None:
    (Path(folder) / CARD).write_text(model_card(report), encoding="utf-8")


def write_compaction_card(folder: str | Path, report: dict) -> None:
    """The card of a compacted checkpoint whose pruning run is unknown (no pruning_report.json)."""
    meta = {"library_name": "transformers", "base_model": str(report["checkpoint"]), "pipeline_tag": "text-classification",
            "tags": ["bermo-prune", "compacted"],
            "bermo_prune": {"arch": report["arch"], "parameters": report["parameters_after"]}}
    rows = [f"| {i} | {l['heads_before']} -> {l['heads_after']} | {l['intermediate_before']} -> {l['intermediate_after']} |"
            for i, l in enumerate(report["layers"])]
    body = [f"# `{report['checkpoint']}`, compacted", "",
            f"Pruned heads and FFN neurons removed by bermo-prune: {report['parameters_before']:,} -> "
            f"{report['parameters_after']:,} parameters.", "", "```bash", _command(report), "```", "",
            "| layer | heads | FFN neurons |", "|---|---|---|", *rows, ""]
    text = "\n".join(["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "", *body])
    (Path(folder) / CARD).write_text(text, encoding="utf-8")


def read_metadata(folder: str | Path) -> dict:
    """The YAML metadata of a model card written by :func:`write_model_card`."""
    text = (Path(folder) / CARD).read_text(encoding="utf-8")
    _, front, _ = text.split("---\n", 2)
    return yaml.safe_load(front)
