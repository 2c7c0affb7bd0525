"""CPU inference latency of structured-pruned models, before vs after compaction, plus the size
of sparse exports at several sparsities.

    python benchmarks/structured_latency.py --pruned runs/sm-bert runs/sl0-bert --dense runs/ft-bert \\
        --sizes-from minilm-l6 --out benchmarks/results/structured_latency
    python benchmarks/structured_latency.py --tiny --out /tmp/structured-tiny      # end-to-end check

Each ``--pruned`` checkpoint (a finalised structured pruning run: whole heads / neurons zeroed) is
timed as saved (dense shapes: the cost of the unpruned model) and after ``compact`` (heads and
neurons removed), in one process, at batch 1 and 32 and sequence lengths 64 and 128. After a
warm-up, each timing sample runs the forward k times (k calibrated so a sample lasts >= 20 ms),
the two models alternate within every round (which goes first alternates too), and the ratio of
the medians is reported, so machine noise hits both alike. The compacted model's task accuracy
is measured on the dev split (it equals the masked model's: the logits match, see max_logit_diff).

Sparse export sizes: the ``--sizes-from`` checkpoint is pruned one-shot by magnitude (the size
depends only on the zeros, not on how they were chosen), saved and exported.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bermo_prune  # noqa: E402,F401  (registers BERMo and compacted BERT)
from bermo_prune import export  # noqa: E402
from bermo_prune.compact import compact, load_checkpoint, structure  # noqa: E402
from bermo_prune.io import write_json_atomic  # noqa: E402
from bermo_prune.pruning.registry import get_pruner_class  # noqa: E402
from bermo_prune.recipes import Recipe  # noqa: E402
from bermo_prune.runs import environment  # noqa: E402

SHAPES = [(1, 64), (1, 128), (32, 64), (32, 128)]
MIN_SAMPLE_S = 0.02


def one_shot(model, pruner: str, sparsity: float, **options):
    recipe = Recipe.model_validate({"name": "one-shot", "pruner": {"name": pruner, "options": options},
                                    "target_sparsity": sparsity, "schedule": {"shape": "one_shot", "start": 0.0, "end": 0.0}})
    p = get_pruner_class(pruner)(recipe)
    p.attach(model, 1)
    p.finalize()
    return [f"{name}.weight" for name in p.modules]


def tiny_checkpoints(root: Path):
    """A random 4-layer BERT with the MiniLM tokenizer, and its structured one-shot pruning."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from bermo_prune.models.load import packaged_minilm

    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm())
    config = BertConfig(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512, num_labels=2)
    torch.manual_seed(0)
    dense = BertForSequenceClassification(config)
    for name, model in (("dense", dense), ("pruned", copy.deepcopy(dense))):
        if name == "pruned":
            one_shot(model, "head_neuron_magnitude", 0.75, head_sparsity=0.5, neuron_sparsity=0.75)
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root / "dense", [root / "pruned"]


def inputs(batch: int, length: int, vocab: int) -> dict:
    g = torch.Generator().manual_seed(batch * 1000 + length)
    ids = torch.randint(1000, min(vocab, 30000), (batch, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def time_pair(models: dict, batch: dict, repeats: int, warmup: int) -> dict:
    """Median seconds per forward of each model, interleaved rounds."""
    with torch.inference_mode():
        for model in models.values():
            for _ in range(warmup):
                model(**batch)
        first = next(iter(models.values()))
        start = time.perf_counter()
        first(**batch)
        k = max(1, int(MIN_SAMPLE_S / max(time.perf_counter() - start, 1e-6)))
        samples = {name: [] for name in models}
        order = list(models)
        for r in range(repeats):
            for name in order if r % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                for _ in range(k):
                    models[name](**batch)
                samples[name].append((time.perf_counter() - start) / k)
    return {name: {"median_s": statistics.median(s), "q1_s": statistics.quantiles(s, n=4)[0],
                   "q3_s": statistics.quantiles(s, n=4)[2], "forwards_per_sample": k} for name, s in samples.items()}


def accuracy(model, tokenizer, task: str, data_dir, max_examples) -> dict:
    from bermo_prune.data import get_task
    from bermo_prune.runs import evaluate_model

    main_metric = get_task(task).main_metric
    metrics = evaluate_model(model, tokenizer, task, data_dir=data_dir, max_examples=max_examples)
    return {"examples": metrics["examples"], "main_metric": main_metric, "value": metrics[main_metric]}


def latency_rows(pruned: list, args) -> tuple[list, list]:
    rows, models_info = [], []
    for checkpoint in pruned:
        masked, tokenizer = load_checkpoint(checkpoint)
        masked.eval()
        small = compact(copy.deepcopy(masked)).eval()
        probe = inputs(8, 64, masked.config.vocab_size)
        with torch.inference_mode():
            diff = (masked(**probe).logits - small(**probe).logits).abs().max().item()
        info = {"checkpoint": str(checkpoint), "arch": masked.config.model_type, "max_logit_diff": diff,
                "parameters_dense": sum(p.numel() for p in masked.parameters()),
                "parameters_compact": sum(p.numel() for p in small.parameters()), "layers": structure(small),
                "heads": [sum(s["heads"] for s in structure(small)), sum(s["heads"] for s in structure(masked))],
                "intermediate": [sum(s["intermediate"] for s in structure(small)), sum(s["intermediate"] for s in structure(masked))]}
        if not args.no_accuracy:
            info["accuracy_compact"] = accuracy(small, tokenizer, args.task, args.data, args.max_eval)
        models_info.append(info)
        for batch_size, length in SHAPES:
            t = time_pair({"dense": masked, "compact": small}, inputs(batch_size, length, masked.config.vocab_size),
                          args.repeats, args.warmup)
            d, c = t["dense"]["median_s"], t["compact"]["median_s"]
            rows.append({"checkpoint": str(checkpoint), "batch": batch_size, "seq": length, "dense_ms": d * 1e3,
                         "compact_ms": c * 1e3, "speedup": d / c, "dense_ex_s": batch_size / d,
                         "compact_ex_s": batch_size / c, "raw": t})
            print(f"{checkpoint} b{batch_size} s{length}: {d * 1e3:.2f} ms -> {c * 1e3:.2f} ms ({d / c:.2f}x)", flush=True)
    return rows, models_info


def size_rows(checkpoint, sparsities: list[float]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="sparse-sizes-") as scratch:
        for s in sparsities:
            model, _ = load_checkpoint(checkpoint)
            targeted = one_shot(model, "magnitude", s)
            model.save_pretrained(Path(scratch) / f"s{s}")
            manifest = export.export_sparse(Path(scratch) / f"s{s}", Path(scratch) / f"s{s}-sparse")
            encoder = export.size_summary(manifest, targeted)
            file_bytes = (Path(scratch) / f"s{s}" / "model.safetensors").stat().st_size
            rows.append({"sparsity": s, "dense_file_bytes": file_bytes, "sparse_file_bytes": manifest["payload"]["bytes"],
                         "file_ratio": manifest["payload"]["bytes"] / file_bytes, "encoder_linear_ratio": encoder["ratio"],
                         "ideal_ratio": 1 - s})
            print(f"sparsity {s}: {file_bytes:,} -> {manifest['payload']['bytes']:,} bytes", flush=True)
    return rows


def markdown(command: str, rows, models_info, sizes, dense_accuracy, threads: int) -> str:
    lines = ["# Structured pruning: CPU latency dense vs compacted, and sparse export sizes", "",
             f"Command: `{command}`", "", f"torch threads: {threads}; median of interleaved repeats after warm-up.", "",
             "| checkpoint | arch | heads kept | FFN kept | params | dev metric (compact) |", "|---|---|---|---|---|---|"]
    for m in models_info:
        acc = m.get("accuracy_compact")
        shown = f"{acc['main_metric']} {acc['value']:.4f}" if acc else "-"
        lines.append(f"| {m['checkpoint']} | {m['arch']} | {m['heads'][0]}/{m['heads'][1]} | "
                     f"{m['intermediate'][0]}/{m['intermediate'][1]} | {m['parameters_compact']:,} / {m['parameters_dense']:,} | {shown} |")
    if dense_accuracy:
        lines += ["", f"Dense reference: {dense_accuracy['checkpoint']}: {dense_accuracy['main_metric']} "
                      f"{dense_accuracy['value']:.4f} ({dense_accuracy['examples']} examples)"]
    lines += ["", "| checkpoint | batch | seq | dense ms | compact ms | speed-up | dense ex/s | compact ex/s |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['checkpoint']} | {r['batch']} | {r['seq']} | {r['dense_ms']:.2f} | {r['compact_ms']:.2f} | "
                     f"{r['speedup']:.2f}x | {r['dense_ex_s']:.1f} | {r['compact_ex_s']:.1f} |")
    if sizes:
        lines += ["", "Sparse export (bitmask + non-zero values) after one-shot magnitude pruning of the encoder Linear weights:", "",
                  "| sparsity | model.safetensors | sparse export | file ratio | encoder Linear ratio | 1 - s |",
                  "|---|---|---|---|---|---|"]
        for s in sizes:
            lines.append(f"| {s['sparsity']:.2f} | {s['dense_file_bytes']:,} | {s['sparse_file_bytes']:,} | {s['file_ratio']:.3f} | "
                         f"{s['encoder_linear_ratio']:.3f} | {s['ideal_ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pruned", nargs="*", default=[], help="finalised structured-pruned checkpoints")
    parser.add_argument("--dense", default=None, help="dense fine-tuned checkpoint: its dev metric is the reference")
    parser.add_argument("--sizes-from", default=None, help="checkpoint for the sparse-export size table")
    parser.add_argument("--sparsities", type=float, nargs="*", default=[0.5, 0.7, 0.8, 0.9, 0.95])
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--data", default=None, help="GLUE TSV folder (default: bundled SST-2)")
    parser.add_argument("--max-eval", type=int, default=None, help="evaluate on the first N dev examples only")
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--tiny", action="store_true", help="random tiny model: checks the script end to end in seconds")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    from bermo_prune.io import quiet_libraries

    quiet_libraries()  # transformers' save/load chatter and progress bars would bury the results
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python benchmarks/structured_latency.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    with tempfile.TemporaryDirectory(prefix="structured-tiny-") as scratch:
        if args.tiny:
            args.dense, args.pruned = tiny_checkpoints(Path(scratch))
            args.sizes_from = args.sizes_from or args.dense
            args.max_eval = args.max_eval or 64
            args.repeats, args.warmup = min(args.repeats, 5), 1
        rows, models_info = latency_rows(args.pruned, args)
        dense_accuracy = None
        if args.dense and not args.no_accuracy:
            model, tokenizer = load_checkpoint(args.dense)
            dense_accuracy = {"checkpoint": str(args.dense), **accuracy(model.eval(), tokenizer, args.task, args.data, args.max_eval)}
        sizes = size_rows(args.sizes_from, args.sparsities) if args.sizes_from else []

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    write_json_atomic(out / "structured_latency.json", {
        "command": command, "tiny": args.tiny, "models": models_info, "latency": rows, "dense_accuracy": dense_accuracy,
        "export_sizes": sizes, "environment": environment(), "repeats": args.repeats, "warmup": args.warmup,
    })
    text = markdown(command, rows, models_info, sizes, dense_accuracy, threads)
    (out / "structured_latency.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
