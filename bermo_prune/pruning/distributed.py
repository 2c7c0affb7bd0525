"""The little torch.distributed the pruners need: all of it is a no-op in a single process."""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0, or a plain single-process run (also before torchrun's group is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def any_process(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true in any process; every process must call it at the same point."""
    if world_size() == 1:
        return flag
    tensor = torch.tensor(float(flag), device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def average_(tensors: Iterable[torch.Tensor]) -> None:
    """Replace each tensor by its mean over the processes (gloo has no AVG: sum, then divide)."""
    size = world_size()
    if size == 1:
        return
    for tensor in tensors:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(size)
