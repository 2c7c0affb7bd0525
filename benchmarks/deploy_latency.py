"""Deployment on CPU: PyTorch fp32 vs ONNX Runtime fp32 vs ONNX Runtime INT8 (dynamic), for dense,
structured-compacted and unstructured-sparse checkpoints: latency as a ratio to the dense PyTorch
fp32 model, dev accuracy and file size of every variant.

    python benchmarks/deploy_latency.py --dense runs/structured-full/ft-bert-3ep \\
        --model compact67=runs/structured-full/sl0-kd-bert-compact --model compact83=... \\
        --model unstructured90=runs/... --threads 2 --out benchmarks/results/deploy
    python benchmarks/deploy_latency.py --tiny --out /tmp/deploy-tiny      # end-to-end check in a minute
    python benchmarks/deploy_latency.py --shapes-from benchmarks/results/structured_full/structured_latency.json \
        --threads 2 --out benchmarks/results/deploy/latency_by_shape       # latency only, random weights

Every variant of every model is exported with ``bermo-prune``'s own ``export_onnx`` (checked
against PyTorch at export) into a scratch folder, as exported by torch and with ONNX Runtime's
transformer fusions (runtime ``onnxruntime-fused``). Latency: for each shape (batch 1 and 32, length 64
and 128, full-length inputs) all variants run in the same process in interleaved rounds (the order
reverses every round), each sample long enough to time (>= 20 ms), and the ratio of medians to the
dense PyTorch fp32 model is reported (``speedup``), so machine noise hits every variant alike. ONNX
Runtime and torch use the same thread count (``--threads``). ``size_mb``: model.safetensors for
PyTorch, model.onnx for ONNX Runtime (neither stores sparsity compactly: see ``export --format sparse``).

Writes ``summary.json`` (rows ``{"model", "runtime", "precision", "batch", "length", "speedup",
"dev_accuracy", "size_mb"}``), ``deploy.json`` (with raw timings and the environment) and ``summary.md``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from structured_latency import SHAPES, accuracy, inputs, time_pair  # noqa: E402

from bermo_prune.deploy import export_onnx, load_for_inference, load_onnx  # noqa: E402
from bermo_prune.io import quiet_libraries, write_json_atomic  # noqa: E402
from bermo_prune.runs import environment  # noqa: E402

# "onnxruntime-fused": the export with ONNX Runtime's transformer fusions (``export --fuse``).
VARIANTS = (("pytorch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
            ("onnxruntime-fused", "fp32"), ("onnxruntime-fused", "int8"))


def tiny_checkpoints(root: Path) -> tuple[Path, dict[str, Path]]:
    """A random 4-layer BERT classifier with the MiniLM tokenizer, and a compacted copy of it."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from bermo_prune.models.compact_shapes import CompactBertConfig, CompactBertForSequenceClassification
    from bermo_prune.models.load import packaged_minilm

    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm())
    shape = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512, num_labels=2)
    torch.manual_seed(0)
    models = {"dense": BertForSequenceClassification(BertConfig(**shape)),
              "compact": CompactBertForSequenceClassification(CompactBertConfig(
                  layer_num_heads=[1, 2, 1, 2], layer_intermediate_sizes=[128] * 4, **shape))}
    for name, model in models.items():
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root / "dense", {"compact": root / "compact"}


def shape_checkpoints(report: Path, root: Path) -> tuple[Path, dict[str, Path]]:
    """Random-weight models with the shapes of MiniLM-L6 (dense) and of every compacted model in a
    ``structured_latency.json``: latency depends on the shapes, not on the values of the weights
    (dense float arithmetic, and dynamic INT8 quantises whatever it is given), so these time the
    real models when their checkpoints are not at hand. They have no accuracy to measure."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from bermo_prune.models.compact_shapes import CompactBertConfig, CompactBertForSequenceClassification
    from bermo_prune.models.load import packaged_minilm

    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm())
    base = BertConfig.from_pretrained(packaged_minilm()).to_dict()
    base.update(num_labels=2, architectures=None)
    torch.manual_seed(0)
    models = {"dense": BertForSequenceClassification(BertConfig(**base))}
    for info in json.loads(report.read_text())["models"]:
        layers = info["layers"]
        config = CompactBertConfig(layer_num_heads=[layer["heads"] for layer in layers],
                                   layer_intermediate_sizes=[layer["intermediate"] for layer in layers], **base)
        models[Path(info["checkpoint"]).name] = CompactBertForSequenceClassification(config)
    for name, model in models.items():
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root / "dense", {name: root / name for name in models if name != "dense"}


def load_variants(name: str, checkpoint: Path, scratch: Path, threads: int) -> dict:
    """{(runtime, precision): (model, tokenizer, size_mb)} for one checkpoint."""
    model, tokenizer = load_for_inference(checkpoint)
    variants = {("pytorch", "fp32"): (model, tokenizer, (checkpoint / "model.safetensors").stat().st_size / 1e6)}
    for runtime, precision in VARIANTS[1:]:
        folder = scratch / f"{name}-{runtime}-{precision}"
        manifest = export_onnx(checkpoint, folder, precision=precision, fuse=runtime.endswith("fused"))
        onnx_model, onnx_tokenizer = load_onnx(folder, threads)
        variants[(runtime, precision)] = (onnx_model, onnx_tokenizer, manifest["bytes"] / 1e6)
        print(f"{name}: exported {runtime} {precision} ({manifest['bytes'] / 1e6:.1f} MB, fused "
              f"{manifest['fused_ops'] or 'nothing'})", flush=True)
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dense", help="the dense fp32 reference checkpoint (a fine-tuned classifier)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=CHECKPOINT",
                        help="a pruned or compacted checkpoint to deploy (repeatable)")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--data", default=None, help="GLUE TSV folder (default: bundled SST-2)")
    parser.add_argument("--max-eval", type=int, default=None, help="evaluate on the first N dev examples only")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="random tiny models: checks the script end to end")
    parser.add_argument("--shapes-from", type=Path, default=None, metavar="STRUCTURED_LATENCY_JSON",
                        help="time random-weight models with MiniLM-L6's shape and each compacted model's shapes "
                        "from this report (latency only: no accuracy)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    command = "python benchmarks/deploy_latency.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    with tempfile.TemporaryDirectory(prefix="deploy-") as scratch:
        scratch = Path(scratch)
        if args.tiny:
            dense, models = tiny_checkpoints(scratch)
            args.max_eval, args.repeats, args.warmup = args.max_eval or 64, min(args.repeats, 5), 1
        elif args.shapes_from:
            dense, models = shape_checkpoints(args.shapes_from, scratch)
        else:
            if not args.dense:
                parser.error("--dense is required (or --tiny)")
            dense = Path(args.dense)
            models = dict(spec.split("=", 1) for spec in args.model)
            models = {name: Path(path) for name, path in models.items()}
        checkpoints = {"dense": dense, **models}
        loaded = {name: load_variants(name, path, scratch, args.threads) for name, path in checkpoints.items()}

        accuracies = {}
        for name, variants in loaded.items():
            for key, (model, tokenizer, _) in variants.items():
                if args.shapes_from:  # random weights: an accuracy would mean nothing
                    accuracies[(name, *key)] = {"value": None, "examples": 0}
                    continue
                result = accuracy(model, tokenizer, args.task, args.data, args.max_eval)
                accuracies[(name, *key)] = result
                print(f"{name} {key[0]} {key[1]}: {result['main_metric']} {result['value']:.4f}", flush=True)

        rows, raw = [], []
        vocab = loaded["dense"][("pytorch", "fp32")][0].config.vocab_size
        for batch_size, length in SHAPES:
            callables = {f"{name}/{r}/{p}": variants[(r, p)][0] for name, variants in loaded.items() for r, p in VARIANTS}
            timings = time_pair(callables, inputs(batch_size, length, vocab), args.repeats, args.warmup)
            reference = timings["dense/pytorch/fp32"]["median_s"]
            raw.append({"batch": batch_size, "length": length, "timings": timings})
            for name, variants in loaded.items():
                for runtime, precision in VARIANTS:
                    t = timings[f"{name}/{runtime}/{precision}"]["median_s"]
                    rows.append({"model": name, "runtime": runtime, "precision": precision, "batch": batch_size,
                                 "length": length, "speedup": round(reference / t, 3),
                                 "dev_accuracy": _rounded(accuracies[(name, runtime, precision)]["value"]),
                                 "size_mb": round(variants[(runtime, precision)][2], 1)})
                    print(f"b{batch_size} l{length} {name} {runtime} {precision}: {t * 1e3:.2f} ms "
                          f"({reference / t:.2f}x)", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "summary.json", rows)
    write_json_atomic(out / "deploy.json", {
        "command": command, "tiny": args.tiny, "random_weights_with_shapes_from": str(args.shapes_from or "") or None,
        "checkpoints": {k: str(v) for k, v in checkpoints.items()},
        "threads": args.threads, "repeats": args.repeats, "warmup": args.warmup, "dev_examples": {
            f"{k[0]}/{k[1]}/{k[2]}": v["examples"] for k, v in accuracies.items()},
        "latency": raw, "environment": environment(),
    })
    text = markdown(command, rows, args.threads)
    (out / "summary.md").write_text(text)
    print(text)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def markdown(command: str, rows: list[dict], threads: int) -> str:
    lines = ["# Deployment: latency (ratio to dense PyTorch fp32), dev accuracy and size", "",
             f"Command: `{command}`", "", f"{threads} threads for torch and ONNX Runtime; median of interleaved repeats.", "",
             "| model | runtime | precision | dev acc. | size MB | b1 l64 | b1 l128 | b32 l64 | b32 l128 |",
             "|---|---|---|---|---|---|---|---|---|"]
    keyed = {(r["model"], r["runtime"], r["precision"], r["batch"], r["length"]): r for r in rows}
    for model, runtime, precision in dict.fromkeys((r["model"], r["runtime"], r["precision"]) for r in rows):
        cells = [f"{keyed[(model, runtime, precision, b, l)]['speedup']:.2f}x" for b, l in SHAPES]
        first = keyed[(model, runtime, precision, *SHAPES[0])]
        shown = "-" if first["dev_accuracy"] is None else f"{100 * first['dev_accuracy']:.1f}"
        lines.append(f"| {model} | {runtime} | {precision} | {shown} | {first['size_mb']:.1f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
