"""L0 pruning with hard-concrete gates (Louizos, Welling & Kingma 2018), with the Lagrangian
sparsity control of Wang, Wohlwend & Lei (2020) and CoFi (Xia, Zhong & Chen 2022).

Each weight, or each block of ``block`` = [rows, cols] weights, has a gate
z = min(1, max(0, sigmoid((log u - log(1-u) + log_alpha) / beta) * (zeta - gamma) + gamma)),
u ~ U(0, 1), sampled in training and replaced by its deterministic value in evaluation. The
expected fraction of open gates is mean(sigmoid(log_alpha - beta * log(-gamma / zeta))).

With s_hat the expected sparsity and t the schedule's sparsity at this step, the gates learn
from the task loss plus the expected-L0 penalty lambda(t) * (1 - s_hat) (recipe ``penalty``), and
s_hat is held to t inside the pruning window in one of two ways:

  constraint: projection (default)  after every optimizer step, every log_alpha is shifted by one
      common amount c (Newton's method on a fixed sample of the gates): down to t while the gates
      lag the schedule, up to t + 0.5 points when the penalty runs further ahead of it. The
      shift keeps the gates' order and spends exactly the schedule's budget; it is the step the
      Lagrangian's multiplier would take if it were solved exactly at each step instead of learned.
  constraint: ascent  the Lagrangian l1 * (s_hat - t) + l2 * (s_hat - t)^2, with l1 and l2
      trained by gradient ascent at ``lagrangian_lr``, as Wang et al. 2020 and CoFi.

The two do different jobs. The projection sets *how many* gates are closed; the penalty, which
reaches the gates through the optimizer, decides *which*: Adam divides each gate's gradient by
its own noise, so a common penalty drives down first the gates of weights whose task gradient is
small and steady, the ones the task needs least. Without it (the projection alone) every gate
moves by the same shift, the gates stay bunched, and at 50% most of them hover half open: on
MiniLM-L6 / SST-2 (8,000 examples x 2 epochs, seed 0) the task loss sat at chance through the
window and the run ended at 71.8, below random masks (78.6). With the penalty at 1,000 from the
window's start (the bundled recipe) the same run reached 81.4, on the schedule to 0.5 points at
the freeze. A penalty whose strength was set by feedback instead of the projection reached 83.8
but ran 35 points past the schedule (a gate that starts to close sees a growing penalty gradient,
sigmoid' rising, so the closing cascades), and the freeze did the pruning: not kept.

Why projection rather than ascent: learned multipliers make a poorly damped loop on short
budgets. Measured at 90% over 300 window steps: with Adam-trained multipliers at ``lagrangian_lr``
0.5 the expected sparsity was 25 points behind the schedule 60 steps into the window, at 2.0 it
ran 10 points ahead 90 steps in. Before the window the constraint is off: there the target is the
initial sparsity and ascent multipliers would only learn to hold the gates open.

Gates start at ``init_keep`` = sigmoid(log_alpha) = 0.99: clipped at 1 in 95% of the samples,
so the model trains almost noise-free before the penalty acts (at 0.8, the earlier default, half
the weights were scaled by a random factor at every step). When the window closes, the gates are
replaced by an exact top-k mask on log_alpha, and each kept weight takes the mean value of its
gate into it (``fix_masks``).
"""

import math
from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from bermo_prune.pruning import masks as M
from bermo_prune.pruning.base import Pruner, PrunerOptions
from bermo_prune.pruning.registry import register_pruner

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1
LOG_RATIO = math.log(-GAMMA / ZETA)
# The projection solves for its shift on a fixed random sample of the gates (all of them when there
# are fewer): s_hat from 2^18 gates is within ~0.1 points of the full mean, at 1/40 of the cost.
PROJECTION_SAMPLE = 2**18
# How far (in sparsity) the projection lets the gates run ahead of the schedule before it shifts
# them back up.
AHEAD_TOLERANCE = 0.005


class L0Options(PrunerOptions):
    gate_lr: float = Field(0.1, gt=0, description="learning rate of log_alpha")
    # Per-weight gates each see ~1/N of the constraint gradient: the multipliers must grow to
    # O(10-100) within a short run before the constraint competes with the task loss.
    lagrangian_lr: float = Field(0.5, gt=0, description="constraint ascent: learning rate of the Lagrange multipliers")
    lagrangian: bool = Field(True, description="drive the expected sparsity to the schedule")
    constraint: Literal["projection", "ascent"] = Field(
        "projection", description="how s_hat is held to the schedule: an exact shift of the gates, or a learned Lagrangian")
    init_keep: float = Field(0.99, gt=0, lt=1, description="initial sigmoid(log_alpha) of each gate "
                             "(its chance to be open starts higher: the stretched gate is clipped at 1)")
    block: tuple[int, int] = Field((1, 1), description="gate granularity: one gate per rows x cols block")

    @field_validator("block")
    @classmethod
    def _positive(cls, block):
        if min(block) < 1:
            raise ValueError("block sizes must be >= 1")
        return block


def block_sizes(mask: "HardConcreteMask") -> torch.Tensor:
    """How many weights each gate of ``mask`` covers (blocks at the edges can be smaller)."""
    rows, cols = mask.mask.shape
    (grid_rows, grid_cols), (b0, b1) = mask.log_alpha.shape, mask.block
    covered = torch.zeros(grid_rows * b0, grid_cols * b1, device=mask.mask.device)
    covered[:rows, :cols] = 1
    return covered.view(grid_rows, b0, grid_cols, b1).sum((1, 3))


def expected_open(log_alpha: torch.Tensor) -> torch.Tensor:
    """P(z > 0) for each gate."""
    return torch.sigmoid(log_alpha - BETA * LOG_RATIO)


def sample_gates(log_alpha: torch.Tensor) -> torch.Tensor:
    u = torch.rand_like(log_alpha).clamp(1e-6, 1 - 1e-6)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def mean_gates(log_alpha: torch.Tensor, points: int = 128) -> torch.Tensor:
    """E[z] for each gate, the mean of the stretched and clipped hard-concrete sample, by the
    midpoint rule over u (deterministic: the global RNG stream is left alone)."""
    total = torch.zeros_like(log_alpha)
    for k in range(points):
        u = (k + 0.5) / points
        s = torch.sigmoid((math.log(u) - math.log1p(-u) + log_alpha) / BETA)
        total += (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)
    return total / points


def deterministic_gates(log_alpha: torch.Tensor) -> torch.Tensor:
    return (torch.sigmoid(log_alpha) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def lagrange_multipliers(shape: tuple[int, ...], device) -> tuple[nn.Parameter, nn.Parameter]:
    """(lambda_1, lambda_2) of the Lagrangian lambda_1 * gap + lambda_2 * gap^2, trained by ascent."""
    multipliers = nn.Parameter(torch.zeros(shape, device=device)), nn.Parameter(torch.zeros(shape, device=device))
    for multiplier in multipliers:
        multiplier.register_hook(torch.neg)  # the optimizer minimises; the multipliers maximise
    return multipliers


def gate_param_groups(gates: list[torch.Tensor], options, multipliers: list[torch.Tensor]) -> list[dict]:
    """Optimizer groups of hard-concrete gates and (if the Lagrangian is on) their multipliers;
    ``options`` has gate_lr, lagrangian and lagrangian_lr (L0Options and the structured variant)."""
    groups = [{"params": gates, "lr": options.gate_lr, "weight_decay": 0.0}]
    if options.lagrangian and multipliers:
        groups.append({"params": multipliers, "lr": options.lagrangian_lr, "weight_decay": 0.0})
    return groups


class HardConcreteMask(nn.Module):
    def __init__(self, shape, block, init_keep, device=None):
        super().__init__()
        rows, cols = shape
        self.block = block
        grid = (math.ceil(rows / block[0]), math.ceil(cols / block[1]))
        init = math.log(init_keep) - math.log1p(-init_keep)
        self.log_alpha = nn.Parameter(torch.full(grid, init, device=device) + 0.01 * torch.randn(grid, device=device))
        self.register_buffer("mask", torch.ones(shape, device=device))
        self.fixed = False

    def expand(self, gates: torch.Tensor) -> torch.Tensor:
        rows, cols = self.mask.shape
        full = gates.repeat_interleave(self.block[0], 0).repeat_interleave(self.block[1], 1)
        return full[:rows, :cols]

    def forward(self, weight):
        if self.fixed:
            return weight * self.mask
        gates = sample_gates(self.log_alpha) if self.training else deterministic_gates(self.log_alpha)
        return weight * self.expand(gates).to(weight.dtype)


@register_pruner
class L0Pruner(Pruner):
    name = "l0"
    Options = L0Options
    trained_sparsity = True

    def make_parametrization(self, name, module):
        return HardConcreteMask(module.weight.shape, tuple(self.options.block), self.options.init_keep, module.weight.device)

    def on_attach(self):
        # Learned multipliers exist only under constraint: ascent (the projection needs none).
        self.lambda_1 = self.lambda_2 = None
        if self.constraint == "ascent":
            self.lambda_1, self.lambda_2 = lagrange_multipliers((), next(iter(self.modules.values())).weight.device)
        self.last_shift = 0.0
        params = list(self.parametrizations().values())
        weights = torch.cat([block_sizes(p).flatten() for p in params])  # weights each gate covers
        generator = torch.Generator().manual_seed(torch.initial_seed())  # leaves the global RNG alone
        sample = torch.randperm(weights.numel(), generator=generator)[:PROJECTION_SAMPLE].sort().values
        self._sample = sample.to(weights.device)
        self._sample_weights = weights[self._sample]

    @property
    def constraint(self) -> str | None:
        """How s_hat is held to the schedule (None: it is not, the penalty ramp alone acts)."""
        return self.options.constraint if self.options.lagrangian else None

    @property
    def projected(self) -> bool:
        return self.constraint == "projection"

    def update(self, sparsity):
        pass  # the Lagrangian follows the schedule every step; masks are fixed when the window closes

    def expected_sparsity(self) -> torch.Tensor:
        """Expected fraction of pruned weights, counting each gate once per weight it covers."""
        kept = total = 0
        for p in self.parametrizations().values():
            kept = kept + p.expand(expected_open(p.log_alpha)).sum()
            total += p.mask.numel()
        return 1 - kept / total

    def loss_terms(self):
        weight = self.current_penalty_weight()
        constrain = self.constraint == "ascent" and self.schedule.in_window(self.step)
        if self.frozen or not (weight or constrain):
            return {}
        s_hat = self.expected_sparsity()
        terms = {}
        if weight:
            terms["penalty"] = weight * (1 - s_hat)
        if constrain:
            gap = s_hat - self.schedule(self.step)
            terms["lagrangian"] = self.lambda_1 * gap + self.lambda_2 * gap * gap
        return terms

    def on_step_end(self, step):
        if self.projected and not self.frozen and self.schedule.in_window(step):
            self.project(self.schedule(step))
        super().on_step_end(step)

    @torch.no_grad()
    def project(self, target: float) -> None:
        """Shift every log_alpha by one common c: down to bring the expected sparsity to ``target``
        when the gates lag the schedule, up to ``target + AHEAD_TOLERANCE`` when the penalty ran
        further ahead. The tolerance keeps the gates where they are near a target of 0 (the
        window's first steps), which an exact s_hat could only meet with an unbounded shift: a
        shift of +6 there once saturated every gate (no sample below 1, no gradient)."""
        params = list(self.parametrizations().values())
        logits = torch.cat([p.log_alpha.detach().flatten() for p in params])
        logits = logits[self._sample.to(logits.device)] - BETA * LOG_RATIO  # the Trainer may have moved the model
        weights = self._sample_weights.to(logits.device, logits.dtype)
        total = weights.sum()

        def open_share(c):  # expected share of weights kept after a shift by c, and its derivative
            p = torch.sigmoid(logits + c)
            return float((weights * p).sum() / total), float((weights * p * (1 - p)).sum() / total)

        keep, share_now = 1.0 - target, open_share(0.0)[0]
        if keep - AHEAD_TOLERANCE <= share_now <= keep:
            self.last_shift = 0.0
            return
        if share_now < keep:  # ahead of the schedule by more than the tolerance: back to its edge
            keep -= AHEAD_TOLERANCE
        low, high, c = -60.0, 60.0, 0.0  # open_share(low) < keep < open_share(high)
        for _ in range(30):
            share, slope = open_share(c)
            if abs(share - keep) < 1e-5:
                break
            low, high = (c, high) if share < keep else (low, c)
            newton = c - (share - keep) / slope if slope > 0 else None
            c = newton if newton is not None and low < newton < high else (low + high) / 2
        for p in params:
            p.log_alpha.add_(c)
        self.last_shift = c

    def plan(self):
        plan = super().plan()
        if self.recipe.penalty is None:
            plan["warnings"].append(
                "l0: no recipe penalty: the gates' order then comes from the task gradient alone, and on "
                "MiniLM-L6 / SST-2 at 50% such masks were worse than random ones (see the l0 pruner's documentation)")
        return plan

    def score_steps(self):
        return self.schedule.end_step  # the gates train from the first step; the hard mask comes at the freeze

    def scores(self):
        return {name: p.expand(p.log_alpha.detach()) for name, p in self.parametrizations().items()}

    @torch.no_grad()
    def fix_masks(self):
        """Top-k masks at exactly the target, with each kept weight multiplied by the mean value
        its gate had in training, E[z] (Louizos et al. fold a gate estimate into the weights the
        same way, theta * z_hat). Without a fold every kept gate jumps to 1 at the freeze. The
        deterministic z_hat is not enough: it is 0 for gates that were still open now and then,
        and top-k keeps some of those whenever the expected sparsity is held while more gates are
        shut than that (measured at 80% on BERT: 85% shut; reopening 5% of the weights at full
        size sent the task loss from 0.31 to chance for good)."""
        super().fix_masks()
        for name, p in self.parametrizations().items():
            scale = torch.where(p.mask > 0, p.expand(mean_gates(p.log_alpha)), torch.ones_like(p.mask))
            M.original_weight(self.modules[name]).mul_(scale.to(p.mask.dtype))

    def on_freeze(self):  # also run when a run resumes after the freeze: the fold above is not
        for p in self.parametrizations().values():
            p.fixed = True
            p.log_alpha.requires_grad_(False)

    def param_groups(self):
        gates = [p.log_alpha for p in self.parametrizations().values()]
        multipliers = [self.lambda_1, self.lambda_2] if self.constraint == "ascent" else []
        return gate_param_groups(gates, self.options, multipliers)

    def current_sparsity(self):
        if self.frozen:
            return super().current_sparsity()
        return self.expected_sparsity().item()

    def state_summary(self):
        if self.frozen:
            return {}
        # Gates whose deterministic value is exactly 0: the sparsity of the model evaluated now.
        closed = sum(float(p.expand((deterministic_gates(p.log_alpha) == 0).float()).sum())
                     for p in self.parametrizations().values())
        total = sum(p.mask.numel() for p in self.parametrizations().values())
        control = {}
        if self.constraint == "projection":
            control = {"shift": self.last_shift}
        elif self.constraint == "ascent":
            control = {"lambda_1": self.lambda_1.item(), "lambda_2": self.lambda_2.item()}
        return {**control, "closed_gates": closed / total}
