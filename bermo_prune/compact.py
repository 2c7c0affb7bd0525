"""Compaction: physically remove pruned attention heads and FFN neurons.

A head is removable when its columns of ``attention.output.dense`` are all zero, a neuron when
its column of ``output.dense`` is: whatever the rest of the group holds, it then adds nothing to
the layer's output, so removing it leaves the logits unchanged (up to float summation order).
The structured pruners zero whole groups; on an unstructured checkpoint only the odd all-zero
column goes.

Rows and columns are cut with torch-pruning's Linear pruning functions. Its dependency graph is
not needed: the coupling inside a BERT layer is fixed and known (q/k/v rows <-> o columns,
intermediate rows <-> output columns), and tracing BERT's reshapes into heads would have to be
taught the head size anyway. The per-layer shapes go into the config
(``layer_num_heads``, ``layer_intermediate_sizes``), and the model is rebuilt from that config
and loaded strictly, so a compacted model in memory is exactly what ``from_pretrained`` rebuilds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch_pruning as tp
from torch import nn
from torch.nn.utils import parametrize
from transformers import BertForSequenceClassification

from bermo_prune.errors import BermoPruneError
from bermo_prune.io import staged_output, write_json_atomic
from bermo_prune.model_card import write_compaction_card, write_model_card
from bermo_prune.models import BermoConfig, BermoForSequenceClassification, load_classifier, resolve_checkpoint
from bermo_prune.models.compact_shapes import CompactBertConfig, CompactBertForSequenceClassification, EmptySelfAttention

COPIED_FILES = ("pruning_report.json",)  # provenance of the pruned checkpoint travels along


def alive_groups(layer: nn.Module) -> tuple[list[int], list[int]]:
    """Indices of the heads and neurons of one BertLayer that still contribute to its output."""
    head_size = layer.attention.self.attention_head_size
    o = layer.attention.output.dense.weight.detach()
    # [num_heads]; an empty layer (0 columns) has 0 heads
    heads = o.reshape(o.shape[0], o.shape[1] // head_size, head_size).ne(0).any(dim=2).any(dim=0)
    neurons = layer.output.dense.weight.detach().ne(0).any(dim=0)
    return heads.nonzero().flatten().tolist(), neurons.nonzero().flatten().tolist()


def _cut_heads(layer: nn.Module, keep: list[int]) -> None:
    attention = layer.attention.self
    head_size, heads = attention.attention_head_size, attention.num_attention_heads
    drop = [h * head_size + i for h in range(heads) if h not in set(keep) for i in range(head_size)]
    if not drop:
        return
    tp.prune_linear_in_channels(layer.attention.output.dense, drop)
    if not keep:  # no head left: a zero-width attention (see EmptySelfAttention)
        layer.attention.self = EmptySelfAttention(head_size)
        return
    for linear in (attention.query, attention.key, attention.value):
        tp.prune_linear_out_channels(linear, drop)
    attention.num_attention_heads = len(keep)
    attention.all_head_size = len(keep) * head_size


def _cut_neurons(layer: nn.Module, keep: list[int]) -> None:
    drop = sorted(set(range(layer.intermediate.dense.out_features)) - set(keep))
    if drop:
        tp.prune_linear_out_channels(layer.intermediate.dense, drop)
        tp.prune_linear_in_channels(layer.output.dense, drop)


def compact(model: nn.Module) -> nn.Module:
    """A smaller model with the same outputs: ``model`` without its dead heads and neurons.

    ``model`` (BERT, compacted BERT or BERMo sequence classifier, no parametrisations left) is
    cut in place; the returned model is a fresh instance built from the compacted config."""
    if not isinstance(model, (BertForSequenceClassification, BermoForSequenceClassification)):
        raise BermoPruneError(f"compaction supports BERT and BERMo sequence classifiers, not {type(model).__name__}")
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise BermoPruneError("the model still has pruning parametrisations; finalize the pruner first")
    heads, sizes = [], []
    for layer in model.bert.encoder.layer:
        keep_heads, keep_neurons = alive_groups(layer)
        _cut_heads(layer, keep_heads)
        _cut_neurons(layer, keep_neurons)
        heads.append(len(keep_heads))
        sizes.append(len(keep_neurons))
    values = model.config.to_dict()
    for key in ("model_type", "architectures", "transformers_version"):
        values.pop(key, None)
    values.update(layer_num_heads=heads, layer_intermediate_sizes=sizes)
    if isinstance(model, BermoForSequenceClassification):
        config, cls = BermoConfig(**values), BermoForSequenceClassification
    else:
        config, cls = CompactBertConfig(**values), CompactBertForSequenceClassification
    compacted = cls(config)
    compacted.load_state_dict(model.state_dict(), strict=True)  # shapes from the config must match the cut
    dtype = next(model.parameters()).dtype
    return compacted.to(dtype).train(model.training)


def structure(model: nn.Module) -> list[dict]:
    """Heads and intermediate size of every encoder layer."""
    return [{"heads": layer.attention.self.num_attention_heads, "intermediate": layer.intermediate.dense.out_features}
            for layer in model.bert.encoder.layer]


def load_checkpoint(checkpoint: str | Path):
    """(model, tokenizer) of a BERT, BERMo or compacted BERT classifier checkpoint, head kept."""
    return load_classifier(checkpoint, None, num_labels=None)


def compact_checkpoint(checkpoint: str | Path, out: str | Path, overwrite: bool = False, command: str | None = None) -> dict:
    """Load, compact and save ``checkpoint`` into ``out`` (atomically) with ``compaction_report.json``."""
    model, tokenizer = load_checkpoint(checkpoint)
    model.eval()
    before, params_before = structure(model), sum(p.numel() for p in model.parameters())
    compacted = compact(model)
    report = {
        "checkpoint": str(checkpoint),
        "arch": compacted.config.model_type,
        "parameters_before": params_before,
        "parameters_after": sum(p.numel() for p in compacted.parameters()),
        **({"command": command} if command else {}),
        "layers": [{"heads_before": b["heads"], "heads_after": a["heads"], "intermediate_before": b["intermediate"],
                    "intermediate_after": a["intermediate"]} for b, a in zip(before, structure(compacted))],
    }
    with staged_output(out, overwrite) as stage:
        compacted.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
        for name in COPIED_FILES:
            source = Path(resolve_checkpoint(checkpoint)) / name
            if source.is_file():
                shutil.copy2(source, stage / name)
        write_json_atomic(stage / "compaction_report.json", report)
        pruned = stage / "pruning_report.json"
        if pruned.is_file():  # the card of the pruned run, with the compaction added
            run = json.loads(pruned.read_text())
            compacted_run = {**run, "compacted": {"parameters": report["parameters_after"], "layers": report["layers"]}}
            write_model_card(stage, {**compacted_run, **({"command": command} if command else {})})
        else:
            write_compaction_card(stage, report)
    return report
