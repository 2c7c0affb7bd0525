"""Masks as re-parametrisations of weights (``torch.nn.utils.parametrize``), exact top-k
selection, and sparsity accounting on plain (finalised) models."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize


class MaskedWeight(nn.Module):
    """weight -> weight * mask, with the mask a (non-trained) buffer."""

    def __init__(self, shape: torch.Size, device=None):
        super().__init__()
        self.register_buffer("mask", torch.ones(shape, device=device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def select_modules(model: nn.Module, include: Iterable[str], exclude: Iterable[str] = ()) -> dict[str, nn.Linear]:
    """Linear modules whose qualified name matches an include regex and no exclude regex."""
    include = [re.compile(p) for p in include]
    exclude = [re.compile(p) for p in exclude]
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and any(p.search(name) for p in include)
        and not any(p.search(name) for p in exclude)
    }


def attach(module: nn.Module, parametrization: nn.Module) -> None:
    parametrize.register_parametrization(module, "weight", parametrization)


def parametrization_of(module: nn.Module) -> nn.Module:
    return module.parametrizations.weight[0]


def original_weight(module: nn.Module) -> torch.Tensor:
    """The trained weight underneath a parametrisation (without the mask applied)."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def bake(module: nn.Module, mask: torch.Tensor) -> None:
    """Write the mask into the weight as real zeros and drop the parametrisation."""
    with torch.no_grad():
        weight = original_weight(module)
        weight.masked_fill_(mask == 0, 0.0)  # not mul_: that leaves -0.0, which sparse export must keep
    parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)


def keep_count(numel: int, sparsity: float) -> int:
    return numel - int(round(sparsity * numel))


# Above this many scores, in-window updates use a sampled threshold: an exact top-k over a
# 10M-weight encoder costs ~0.3 s, which every-10-steps updates cannot afford.
APPROX_ABOVE = 1 << 22
APPROX_SAMPLE = 1 << 20
APPROX_TOLERANCE = 0.002


def topk_masks(
    scores: Mapping[str, torch.Tensor], sparsity: float, scope: str, exact: bool = True
) -> dict[str, torch.Tensor]:
    """Binary masks keeping the highest scores. With ``exact``, exactly round(sparsity * n)
    entries are pruned, over all tensors together (``global``) or within each tensor
    (``per_layer``); the count is exact even when many scores are equal (e.g. all zero), though
    which of the tied entries go is up to ``torch.topk``. Without it, large score sets may be cut
    at a sampled quantile, within 0.2% of the target (falling back to exact when ties make the
    sample miss)."""
    groups = [{name: s} for name, s in scores.items()] if scope == "per_layer" else [dict(scores)]
    masks = {}
    for group in groups:
        approx = None if exact else _sampled_threshold_masks(group, sparsity)
        masks.update(approx if approx is not None else _exact_masks(group, sparsity))
    return masks


def _exact_masks(scores: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    flat = torch.cat([s.reshape(-1).float() for s in scores.values()])
    keep = keep_count(flat.numel(), sparsity)
    mask = torch.zeros_like(flat)
    if keep > 0:
        mask[torch.topk(flat, keep, sorted=False).indices] = 1.0
    masks, offset = {}, 0
    for name, s in scores.items():
        masks[name] = mask[offset : offset + s.numel()].view_as(s)
        offset += s.numel()
    return masks


def _sampled_threshold_masks(scores: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor] | None:
    n = sum(s.numel() for s in scores.values())
    keep = keep_count(n, sparsity)
    if n <= APPROX_ABOVE or keep in (0, n):
        return None
    generator = torch.Generator().manual_seed(0)  # deterministic, so runs replay exactly
    sample = torch.cat([
        s.reshape(-1)[torch.randint(s.numel(), (max(1, s.numel() * APPROX_SAMPLE // n),), generator=generator).to(s.device)]
        for s in scores.values()
    ]).float()
    pruned_in_sample = min(sample.numel(), max(1, round((n - keep) / n * sample.numel())))
    threshold = torch.kthvalue(sample.cpu(), pruned_in_sample).values
    masks = {name: (s > threshold.to(s.device)).float() for name, s in scores.items()}
    if abs(sum(m.sum().item() for m in masks.values()) - keep) > APPROX_TOLERANCE * n:
        return None
    return masks


def sparsity_report(model: nn.Module, target_names: Iterable[str]) -> dict:
    """Zero fractions of the targeted weights (each and together) and of the whole encoder."""
    target_names = list(target_names)
    modules = dict(model.named_modules())
    per_layer, zeros, total = {}, 0, 0
    for name in target_names:
        weight = modules[name].weight.detach()
        z = int((weight == 0).sum())
        per_layer[name] = z / weight.numel() if weight.numel() else 0.0  # a compacted layer can be empty
        zeros += z
        total += weight.numel()
    enc_zeros = enc_total = 0
    for name, param in model.named_parameters():
        if ".encoder." in f".{name}" and "parametrizations" not in name:
            enc_zeros += int((param.detach() == 0).sum())
            enc_total += param.numel()
    for name in target_names:  # parametrised weights are not plain parameters: count their effective value
        if parametrize.is_parametrized(modules[name], "weight") and ".encoder." in f".{name}":
            weight = modules[name].weight.detach()
            enc_zeros += int((weight == 0).sum())
            enc_total += weight.numel()
    return {
        "targeted": zeros / total if total else 0.0,
        "encoder": enc_zeros / enc_total if enc_total else 0.0,
        "targeted_params": total,
        "encoder_params": enc_total,
        "per_layer": per_layer,
    }
