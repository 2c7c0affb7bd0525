"""Per-layer shapes of a compacted encoder (fewer attention heads, smaller FFNs).

transformers 5 dropped ``prune_heads``, and a BertModel built from a config has the same head
count and intermediate size in every layer. A compacted checkpoint therefore records its shapes
in the config (``layer_num_heads``, ``layer_intermediate_sizes``, one entry per layer) and the
model classes call :func:`apply_compact_shapes` in ``__init__`` so that ``from_pretrained``
builds Linear layers of the saved shapes before it loads the weights.

The head size stays ``hidden_size // num_attention_heads`` of the original config (removing a
head removes its ``head_size`` rows of query/key/value), so the attention scaling is unchanged.
BertSelfAttention infers the head count from the projection width (``view(..., -1, head_size)``),
which is why only the Linear layers and the bookkeeping attributes need to change.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification


class EmptySelfAttention(nn.Module):
    """A self-attention with every head removed: its output has width 0, so the following
    ``attention.output.dense`` (in_features 0) contributes only its bias, exactly like a fully
    masked attention block. A separate module because ``view(..., -1, head_size)`` cannot infer
    a head count from an empty tensor."""

    num_attention_heads = 0
    all_head_size = 0

    def __init__(self, head_size: int):
        super().__init__()
        self.attention_head_size = head_size

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        return hidden_states.new_zeros(*hidden_states.shape[:-1], 0), None


def layer_shapes(config) -> tuple[list[int], list[int]] | None:
    """(heads per layer, intermediate size per layer), or None for an uncompacted config."""
    heads = getattr(config, "layer_num_heads", None)
    sizes = getattr(config, "layer_intermediate_sizes", None)
    if heads is None and sizes is None:
        return None
    n = config.num_hidden_layers
    heads = list(heads) if heads is not None else [config.num_attention_heads] * n
    sizes = list(sizes) if sizes is not None else [config.intermediate_size] * n
    if len(heads) != n or len(sizes) != n:
        raise ValueError(f"layer_num_heads / layer_intermediate_sizes need {n} entries (got {len(heads)}, {len(sizes)})")
    return heads, sizes


def _linear(in_features: int, out_features: int) -> nn.Linear:
    with warnings.catch_warnings():  # a layer with no head or no neuron left has a 0-wide weight
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        return nn.Linear(in_features, out_features)


def apply_compact_shapes(bert: nn.Module, config) -> None:
    """Resize the encoder layers of ``bert`` (a BertModel) to the shapes in ``config``; a no-op
    for ordinary configs. The model's ``post_init`` initialises the new layers, loading fills them."""
    shapes = layer_shapes(config)
    if shapes is None:
        return
    hidden = config.hidden_size
    head_size = hidden // config.num_attention_heads
    for layer, heads, size in zip(bert.encoder.layer, *shapes):
        attention = layer.attention
        width = heads * head_size
        if heads == 0:
            attention.self = EmptySelfAttention(head_size)
        elif heads != attention.self.num_attention_heads:
            attention.self.query = _linear(hidden, width)
            attention.self.key = _linear(hidden, width)
            attention.self.value = _linear(hidden, width)
        attention.self.num_attention_heads = heads
        attention.self.all_head_size = width
        if attention.output.dense.in_features != width:
            attention.output.dense = _linear(width, hidden)
        if layer.intermediate.dense.out_features != size:
            layer.intermediate.dense = _linear(hidden, size)
            layer.output.dense = _linear(size, hidden)


class CompactBertConfig(BertConfig):
    """A BertConfig with per-layer shapes, under its own model_type so that the Auto classes
    pick :class:`CompactBertForSequenceClassification` (plain BERT would build full layers)."""

    model_type = "bert-compact"

    def __init__(self, layer_num_heads: list[int] | None = None, layer_intermediate_sizes: list[int] | None = None, **kwargs):
        self.layer_num_heads = layer_num_heads
        self.layer_intermediate_sizes = layer_intermediate_sizes
        super().__init__(**kwargs)


class CompactBertForSequenceClassification(BertForSequenceClassification):
    config_class = CompactBertConfig

    def __init__(self, config: CompactBertConfig):
        super().__init__(config)
        apply_compact_shapes(self.bert, config)
        self.post_init()  # initialises the rebuilt layers only: the others are flagged as done
