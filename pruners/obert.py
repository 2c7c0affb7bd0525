"""oBERT, the Optimal BERT Surgeon (Kurtic et al., EMNLP 2022): second-order pruning with a
block-diagonal empirical Fisher, the unstructured form of the authors' SparseML implementation.

The weights of each targeted matrix, flattened, are cut into blocks of ``block_size`` (B)
consecutive entries. Each block has its empirical Fisher F = damp * I + (1/m) sum_k g_k g_k^T over
m gradients, and its inverse is built one gradient at a time by Sherman-Morrison:

    F^-1 <- F^-1 - (F^-1 g)(F^-1 g)^T / (m + g^T F^-1 g),       starting from I / damp.

At a pruning step each weight's saliency (the loss increase of removing it, the rest moving
optimally) is rho_i = w_i^2 / (2 [F^-1]_ii); the lowest saliencies are pruned (top-k on the
schedule), and the weights that stay take the optimal update for the ones that left,

    dW = - sum_{i newly pruned} F^-1 e_i w_i / [F^-1]_ii         (within each block),

the sum of the single-weight updates, as SparseML's oBERT does for unstructured masks (it ignores
the interaction between weights pruned together in one block).

The m gradients of a pruning step are the training gradients of the m optimizer steps before it
(the accumulated, clipped gradient the optimizer is about to apply: under DistributedDataParallel
already averaged, so every process builds the same inverse). Pruning steps are the schedule's
updates (every ``update_every`` steps of the window; set it to at least ``num_grads``) and the
freeze, which prunes to the exact target with an update too. Between collections no inverse is
kept. A checkpoint written while gradients are being collected carries the partial inverses
(the pruner's state), so ``--resume`` continues them.

Memory: the inverses take (number of targeted weights) x B x 4 bytes while a step's gradients are
collected: 2.1 GB for MiniLM-L6's 10.6M encoder Linear weights at B = 50, 17 GB for BERT-base's
85M. ``attach`` refuses with a one-line error when that is more than the free memory of the
device. Cost: one batched B x B matrix-vector product and rank-one update per block and step
while collecting (about 4 * B flops per weight), and none otherwise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field

from bermo_prune.errors import BermoPruneError
from bermo_prune.pruning import masks as M
from bermo_prune.pruning.base import Pruner, PrunerOptions
from bermo_prune.pruning.registry import register_pruner

# Never plan to fill more than this share of the free memory with Fisher inverses.
MEMORY_SHARE = 0.8
# Blocks per Sherman-Morrison update: 8,192 blocks of 50 x 50 are 82 MB of temporaries.
UPDATE_CHUNK = 8192


class OBertOptions(PrunerOptions):
    num_grads: int = Field(64, ge=1, description="gradients (optimizer steps) in each pruning step's Fisher (m)")
    block_size: int = Field(50, ge=1, description="consecutive weights per Fisher block (B)")
    damp: float = Field(1e-7, gt=0, description="dampening of the empirical Fisher (lambda * I)")


def free_memory_bytes(device: torch.device) -> int | None:
    """Free memory of ``device``: CUDA's own count, or the kernel's MemAvailable (free memory plus
    what the page cache would give back) on Linux; None where neither is known."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def block_view(tensor: torch.Tensor, block_size: int) -> torch.Tensor:
    """The flattened tensor, zero-padded to whole blocks, as (blocks, block_size)."""
    flat = tensor.reshape(-1)
    return F.pad(flat, (0, -flat.numel() % block_size)).view(-1, block_size)


class OBertMask(M.MaskedWeight):
    """The mask, and while gradients are collected the inverse Fisher of every block."""

    def __init__(self, shape, block_size: int, device=None):
        super().__init__(shape, device=device)
        self.block_size = block_size
        self.blocks = math.ceil(math.prod(shape) / block_size)
        self.inverse: torch.Tensor | None = None  # (blocks, B, B)

    def start_fisher(self, damp: float) -> None:
        eye = torch.eye(self.block_size, device=self.mask.device) / damp
        self.inverse = eye.expand(self.blocks, -1, -1).clone()

    def add_gradient(self, grad: torch.Tensor, num_grads: int) -> None:
        g = block_view(grad, self.block_size).unsqueeze(-1)                        # (blocks, B, 1)
        # In chunks of blocks: the rank-one update's temporary is as large as its chunk of F^-1.
        for inverse, gc in zip(self.inverse.split(UPDATE_CHUNK), g.split(UPDATE_CHUNK)):
            fg = torch.bmm(inverse, gc)                                            # F^-1 g
            denominator = num_grads + torch.bmm(gc.transpose(1, 2), fg)            # m + g^T F^-1 g
            inverse.baddbmm_(fg, fg.transpose(1, 2) / denominator, alpha=-1)       # F^-1 is symmetric

    def diagonal(self) -> torch.Tensor:
        """[F^-1]_ii of every weight, in the weight's shape."""
        numel = self.mask.numel()
        return self.inverse.diagonal(dim1=1, dim2=2).reshape(-1)[:numel].view_as(self.mask)

    def saliency(self, weight: torch.Tensor) -> torch.Tensor:
        """rho = w^2 / (2 [F^-1]_ii) of the masked weight (0 where already pruned)."""
        return (weight * self.mask).pow(2) / (2 * self.diagonal())

    def update_for(self, weight: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
        """dW = -F^-1 (w / diag(F^-1)) restricted to the weights in ``pruned``, in the weight's shape."""
        removed = torch.where(pruned, weight / self.diagonal(), torch.zeros_like(weight))
        change = -torch.bmm(self.inverse, block_view(removed, self.block_size).unsqueeze(-1))
        return change.reshape(-1)[: weight.numel()].view_as(weight)


@register_pruner
class OBertPruner(Pruner):
    name = "obert"
    Options = OBertOptions

    def make_parametrization(self, name, module):
        return OBertMask(module.weight.shape, self.options.block_size, device=module.weight.device)

    def on_attach(self):
        self._check_memory(next(iter(self.modules.values())).weight.device)

    def to(self, *args, **kwargs):
        # The Trainer moves the model (and the pruner with it) after attach: the inverses will be
        # made on that device, so its memory is the one that counts.
        super().to(*args, **kwargs)
        self._check_memory(torch.empty(0).to(*args, **kwargs).device)

    def _check_memory(self, device: torch.device) -> None:
        needed = sum(p.blocks for p in self.parametrizations().values()) * self.options.block_size ** 2 * 4
        free = free_memory_bytes(device)
        if free is not None and needed > MEMORY_SHARE * free:
            raise BermoPruneError(
                f"obert: the block Fisher inverses need {needed / 1e9:.1f} GB (targeted weights x block_size "
                f"{self.options.block_size} x 4 bytes) and {device.type} memory has {free / 1e9:.1f} GB free: lower "
                "options.block_size, target fewer modules, or use a device with more memory")

    def pruning_steps(self) -> list[int]:
        """The optimizer steps after which masks are chosen: the schedule's updates and the freeze."""
        s = self.schedule
        if s.end_step <= s.start_step:
            return [s.end_step]
        every = self.recipe.schedule.update_every
        return [*range(s.start_step, s.end_step, every), s.end_step]

    def collecting(self, step: int) -> bool:
        """Whether the gradient of optimizer step ``step`` (1-based) goes into a Fisher."""
        return not self.frozen and any(p - self.options.num_grads < step <= p for p in self.pruning_steps())

    def before_optimizer_step(self):
        step = self.step + 1  # the step the optimizer is about to take
        if not self.collecting(step):
            return
        with torch.no_grad():
            for module in self.modules.values():
                grad = M.original_weight(module).grad
                if grad is None:
                    continue
                p = M.parametrization_of(module)
                if p.inverse is None:
                    p.start_fisher(self.options.damp)
                p.add_gradient(grad.float(), self.options.num_grads)

    def _have_fisher(self) -> bool:
        return all(p.inverse is not None for p in self.parametrizations().values())

    def scores(self):
        weights = self.weights()
        if not self._have_fisher():  # no gradient seen yet (a one-shot schedule at step 0): magnitude
            return {name: (w * self.parametrizations()[name].mask).abs() for name, w in weights.items()}
        return {name: p.saliency(weights[name]) for name, p in self.parametrizations().items()}

    def set_masks(self, new_masks):
        """New masks, and the optimal update of the kept weights for the ones just pruned."""
        if self._have_fisher():
            with torch.no_grad():
                for name, module in self.modules.items():
                    p = M.parametrization_of(module)
                    weight = M.original_weight(module)
                    pruned = (p.mask > 0) & (new_masks[name] == 0)
                    kept = new_masks[name].to(weight.dtype)
                    weight.add_(p.update_for(weight.float(), pruned).to(weight.dtype) * kept)
        super().set_masks(new_masks)
        for p in self.parametrizations().values():
            p.inverse = None  # the next pruning step collects gradients at the new weights

    def score_steps(self):
        return min(self.options.num_grads, self.schedule.start_step)

    def plan(self):
        plan = super().plan()
        steps = self.pruning_steps()
        plan["pruning_steps"] = len(steps)
        gaps = [b - a for a, b in zip(steps, steps[1:])]
        if self.schedule.start_step < self.options.num_grads or any(g < self.options.num_grads for g in gaps):
            plan["warnings"].append(
                f"obert: pruning steps are {min([self.schedule.start_step, *gaps])} optimizer steps apart at the least, "
                f"fewer than num_grads {self.options.num_grads}: those steps' Fisher holds fewer gradients (raise "
                "schedule.update_every or lower options.num_grads)")
        return plan

    def state_dict(self):
        state = super().state_dict()
        for name, p in self.parametrizations().items():
            if p.inverse is not None:
                state[f"fisher_inverse.{name}"] = p.inverse.clone()
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        for name, p in self.parametrizations().items():
            saved = state.get(f"fisher_inverse.{name}")
            p.inverse = None if saved is None else saved.to(p.mask.device).clone()
