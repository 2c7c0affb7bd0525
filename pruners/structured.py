"""Structured pruning of whole attention heads and whole FFN neurons.

A head h of a layer owns rows h*d..(h+1)*d of query/key/value (weights and biases) and the same
columns of attention.output.dense; an FFN neuron j owns row j of intermediate.dense (and its bias)
and column j of output.dense. Masks act on all of these at once, biases included, so a pruned
head or neuron outputs exactly zero and ``bermo_prune.compact`` can remove it without changing
the logits.

``target_sparsity`` (or the options ``head_sparsity`` / ``neuron_sparsity``) is the fraction of
heads and of neurons removed, exactly: round(s * n) over the whole encoder (``global`` scope) or
round(s * n_layer) in each layer (``per_layer``). The schedule's progress s(t) / target scales
both targets. Each layer keeps at least one head unless ``allow_empty_attention`` is set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils import parametrize

from bermo_prune.errors import BermoPruneError
from bermo_prune.pruning import masks as M
from bermo_prune.pruning.base import Pruner, PrunerOptions
from bermo_prune.pruning.distributed import average_
from bermo_prune.pruning.registry import register_pruner
from .movement import MovementMask

ROLES = {
    "attention.self.query": "q", "attention.self.key": "k", "attention.self.value": "v",
    "attention.output.dense": "o", "intermediate.dense": "up", "output.dense": "down",
}
_NAME = re.compile(r"^(.*\.)?(encoder\.layer\.\d+)\.(" + "|".join(re.escape(r) for r in ROLES) + r")$")


class StructuredOptions(PrunerOptions):
    head_sparsity: float | None = Field(None, ge=0, le=1, description="fraction of heads removed (default: target)")
    neuron_sparsity: float | None = Field(None, ge=0, le=1, description="fraction of FFN neurons removed (default: target)")
    allow_empty_attention: bool = Field(False, description="allow a layer to lose all its heads")


@dataclass
class Layer:
    """The six Linear layers of one encoder block, as (row/column) groups."""

    name: str
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    up: nn.Linear
    down: nn.Linear
    head_size: int

    @property
    def num_heads(self) -> int:
        return self.q.out_features // self.head_size

    @property
    def num_neurons(self) -> int:
        return self.up.out_features


def group_rows(t: torch.Tensor, groups: int) -> torch.Tensor:
    """[groups * size, ...] -> [groups, size * ...]: one row of entries per group."""
    return t.reshape(groups, -1)


def group_cols(t: torch.Tensor, groups: int) -> torch.Tensor:
    return t.reshape(t.shape[0], groups, -1).transpose(0, 1).reshape(groups, -1)


def select_keep(scores: dict[str, torch.Tensor], fraction: float, scope: str, min_keep: int, what: str = "heads"):
    """Boolean keep vectors pruning exactly round(fraction * n) groups (overall or per layer),
    while each layer keeps its ``min_keep`` best groups."""
    sizes = {name: s.numel() for name, s in scores.items()}
    if scope == "per_layer":
        short = [name for name, n in sizes.items() if M.keep_count(n, fraction) < min(min_keep, n)]
        if short:
            raise BermoPruneError(f"{short[0]}: pruning {fraction:.0%} of {sizes[short[0]]} {what} leaves fewer than "
                                  f"{min_keep}; set allow_empty_attention or lower the target")
    else:
        total, needed = sum(sizes.values()), sum(min(min_keep, n) for n in sizes.values())
        if M.keep_count(total, fraction) < needed:
            raise BermoPruneError(f"pruning {fraction:.0%} of {total} {what} leaves {M.keep_count(total, fraction)}, fewer "
                                  f"than {needed} ({min_keep} per layer); set allow_empty_attention or lower the target")
    protected = {}
    for name, s in scores.items():  # the best min_keep groups of every layer rank above everything else
        protected[name] = s.float().clone()
        protected[name][torch.topk(protected[name], min(min_keep, s.numel())).indices] = float("inf")
    return {name: mask.bool() for name, mask in M.topk_masks(protected, fraction, scope).items()}


class StructuredPruner(Pruner):
    """Head/neuron masks on the recipe's schedule; subclasses say how to score the groups."""

    Options = StructuredOptions
    weight_mask = M.MaskedWeight  # parametrisation class for weights and biases

    # --- building the groups --------------------------------------------------------------------
    def make_parametrization(self, name, module):
        return self.weight_mask(module.weight.shape, device=module.weight.device)

    def on_attach(self):
        found: dict[str, dict] = {}
        for name, module in self.modules.items():
            match = _NAME.match(name)
            if match is None:
                raise BermoPruneError(f"structured pruner {self.name}: {name} is not an encoder Linear of a BERT layer")
            found.setdefault((match.group(1) or "") + match.group(2), {})[ROLES[match.group(3)]] = module
        model_modules = dict(self.model.named_modules())
        self.layers = []
        for prefix, roles in found.items():
            if len(roles) != len(ROLES):
                missing = sorted(set(ROLES.values()) - set(roles))
                raise BermoPruneError(f"structured pruner {self.name}: recipe targets leave out {missing} of {prefix}")
            head_size = model_modules[f"{prefix}.attention.self"].attention_head_size
            self.layers.append(Layer(prefix, head_size=head_size, **roles))
        self.bias_masks = {}
        for layer in self.layers:  # the biases of the pruned rows; output.dense's bias is shared
            for module in (layer.q, layer.k, layer.v, layer.up):
                mask = self.weight_mask(module.bias.shape, device=module.bias.device)
                parametrize.register_parametrization(module, "bias", mask)
                self.bias_masks[id(module)] = mask
        head_target = self.targets()[0]  # an unreachable target fails now, not when the window closes
        min_heads = 0 if self.options.allow_empty_attention else 1
        select_keep({l.name: torch.zeros(l.num_heads) for l in self.layers}, head_target, self.recipe.scope, min_heads)

    # --- scores and masks ------------------------------------------------------------------------
    def group_scores(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(head scores [num_heads] per layer, neuron scores [num_neurons] per layer); higher = keep."""
        raise NotImplementedError

    def targets(self) -> tuple[float, float]:
        o, t = self.options, self.recipe.target_sparsity
        return (t if o.head_sparsity is None else o.head_sparsity), (t if o.neuron_sparsity is None else o.neuron_sparsity)

    def keep_masks(self, progress: float):
        head_target, neuron_target = self.targets()
        head_scores, neuron_scores = self.group_scores()
        min_heads = 0 if self.options.allow_empty_attention else 1
        scope = self.recipe.scope
        heads = select_keep(head_scores, head_target * progress, scope, min_heads)
        neurons = select_keep(neuron_scores, neuron_target * progress, scope, 0, "neurons")
        return heads, neurons

    def update(self, sparsity):
        self.sync()
        target = self.recipe.target_sparsity
        self.apply_keep(*self.keep_masks(min(1.0, sparsity / target) if target > 0 else 1.0))

    def fix_masks(self):
        self.apply_keep(*self.keep_masks(1.0))

    def apply_keep(self, heads: dict[str, torch.Tensor], neurons: dict[str, torch.Tensor]) -> None:
        """Write head/neuron keep vectors into the weight and bias masks of every layer."""
        def put(module, rows=None, cols=None):
            weight_mask = module.parametrizations.weight[0].mask
            if rows is not None:
                weight_mask.copy_(rows[:, None].expand_as(weight_mask))
                self.bias_masks[id(module)].mask.copy_(rows)
            else:
                weight_mask.copy_(cols[None, :].expand_as(weight_mask))

        with torch.no_grad():
            for layer in self.layers:
                head_rows = heads[layer.name].float().repeat_interleave(layer.head_size)
                for module in (layer.q, layer.k, layer.v):
                    put(module, rows=head_rows)
                put(layer.o, cols=head_rows)
                put(layer.up, rows=neurons[layer.name].float())
                put(layer.down, cols=neurons[layer.name].float())

    def finalize(self):
        super().finalize()  # bakes the weight masks
        for layer in self.layers:
            for module in (layer.q, layer.k, layer.v, layer.up):
                with torch.no_grad():  # masked_fill, not mul: no -0.0 in the checkpoint
                    module.parametrizations.bias.original.masked_fill_(self.bias_masks[id(module)].mask == 0, 0.0)
                parametrize.remove_parametrizations(module, "bias", leave_parametrized=False)

    def state_summary(self):
        kept = self.structure_summary().values()
        return {"heads": sum(k["heads"] for k in kept), "neurons": sum(k["neurons"] for k in kept)}

    def structure_summary(self) -> dict:
        """Heads and neurons kept per layer (from the current masks)."""
        return {layer.name: {"heads": int(self.bias_masks[id(layer.q)].mask.sum()) // layer.head_size,
                             "neurons": int(self.bias_masks[id(layer.up)].mask.sum())} for layer in self.layers}

    # --- helpers for the criteria ----------------------------------------------------------------
    def per_group(self, layer: Layer, tensor_of, reduce) -> tuple[torch.Tensor, torch.Tensor]:
        """Reduce ``tensor_of(module, 'weight' | 'bias')`` over each head and neuron group."""
        h, n = layer.num_heads, layer.num_neurons
        head_parts = [group_rows(tensor_of(m, "weight"), h) for m in (layer.q, layer.k, layer.v)]
        head_parts += [group_rows(tensor_of(m, "bias"), h) for m in (layer.q, layer.k, layer.v)]
        head_parts.append(group_cols(tensor_of(layer.o, "weight"), h))
        neuron_parts = [group_rows(tensor_of(layer.up, "weight"), n), group_rows(tensor_of(layer.up, "bias"), n),
                        group_cols(tensor_of(layer.down, "weight"), n)]
        return reduce(torch.cat(head_parts, dim=1)), reduce(torch.cat(neuron_parts, dim=1))

    def by_layer(self, tensor_of, reduce):
        pairs = {layer.name: self.per_group(layer, tensor_of, reduce) for layer in self.layers}
        return {k: v[0] for k, v in pairs.items()}, {k: v[1] for k, v in pairs.items()}


def _original(module: nn.Module, tensor: str) -> torch.Tensor:
    return getattr(module.parametrizations, tensor).original.detach()


@register_pruner
class HeadNeuronMagnitudePruner(StructuredPruner):
    """Importance = L2 norm of all the weights (and biases) a head or neuron owns."""

    name = "head_neuron_magnitude"

    def group_scores(self):
        return self.by_layer(_original, lambda g: g.float().pow(2).sum(dim=1).sqrt())


@register_pruner
class HeadNeuronMovementPruner(StructuredPruner):
    """Importance = the movement scores -W * dL/dW' of Sanh et al. (2020), accumulated over
    training and summed over the group (the block view of Lagunas et al. 2021, Block Pruning)."""

    name = "head_neuron_movement"
    weight_mask = MovementMask  # accumulates -W * dL/dW' per entry, biases included

    def group_scores(self):
        return self.by_layer(lambda m, t: getattr(m.parametrizations, t)[0].scores, lambda g: g.sum(dim=1))

    def sync(self):
        average_([p.scores for p in self.parametrizations().values()] + [p.scores for p in self.bias_masks.values()])
