"""L0 gates per attention head and per FFN neuron (CoFi, Xia, Zhong & Chen 2022).

Each head and each intermediate neuron has a hard-concrete gate z (the distribution of
``l0``). As in CoFi the gate multiplies the head's attention output and the neuron's
activation, through forward hooks: one sample per forward pass is shared by all the weights of
the group (gating every weight matrix separately would draw different samples for q, k, v and o
of one head). The masks of :class:`StructuredPruner` stay at one until the window closes.

Loss terms, with s_h, s_n the expected fractions of closed head / neuron gates and t_h, t_n the
schedule's head / neuron targets at this step:
  lambda(t) * (1 - s_w)                                expected-L0 penalty over weights (optional)
  sum_i l1_i * (s_i - t_i) + l2_i * (s_i - t_i)^2      Lagrangian, i in {heads, neurons}; ascent
When the window closes, exact top-k of log_alpha fixes the masks and the hooks are removed.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from pydantic import Field
from torch import nn

from bermo_prune.pruning.registry import register_pruner
from .l0 import deterministic_gates, expected_open, gate_param_groups, lagrange_multipliers, sample_gates
from .structured import StructuredOptions, StructuredPruner


class StructuredL0Options(StructuredOptions):
    gate_lr: float = Field(0.1, gt=0, description="learning rate of log_alpha")
    lagrangian_lr: float = Field(0.5, gt=0, description="learning rate of the Lagrange multipliers (as l0)")
    lagrangian: bool = Field(True, description="drive the expected head/neuron sparsity to the schedule")
    init_keep: float = Field(0.95, gt=0, lt=1, description="initial sigmoid(log_alpha) of each gate (as l0)")


@register_pruner
class HeadNeuronL0Pruner(StructuredPruner):
    name = "head_neuron_l0"
    Options = StructuredL0Options
    trained_sparsity = True

    def on_attach(self):
        super().on_attach()
        device = self.layers[0].q.parametrizations.weight.original.device
        init = math.log(self.options.init_keep) - math.log1p(-self.options.init_keep)

        def gates(n: int) -> nn.Parameter:  # small noise: ties in log_alpha would make top-k arbitrary
            return nn.Parameter(torch.full((n,), init, device=device) + 0.01 * torch.randn(n, device=device))

        self.head_alpha = {layer.name: gates(layer.num_heads) for layer in self.layers}
        self.neuron_alpha = {layer.name: gates(layer.num_neurons) for layer in self.layers}
        self.hooks = []
        for layer in self.layers:
            attention = self.model.get_submodule(f"{layer.name}.attention.self")
            intermediate = self.model.get_submodule(f"{layer.name}.intermediate")
            self.hooks.append(attention.register_forward_hook(partial(self._gate_heads, layer)))
            self.hooks.append(intermediate.register_forward_hook(partial(self._gate_neurons, layer)))
        self.lambda_1, self.lambda_2 = lagrange_multipliers((2,), device)  # (heads, neurons)

    # --- gates in the forward pass ---------------------------------------------------------------
    @staticmethod
    def _gates(log_alpha: torch.Tensor, training: bool) -> torch.Tensor:
        return sample_gates(log_alpha) if training else deterministic_gates(log_alpha)

    def _gate_heads(self, layer, module, args, output):
        z = self._gates(self.head_alpha[layer.name], module.training).repeat_interleave(layer.head_size)
        return (output[0] * z.to(output[0].dtype), *output[1:])

    def _gate_neurons(self, layer, module, args, output):
        return output * self._gates(self.neuron_alpha[layer.name], module.training).to(output.dtype)

    # --- sparsity control ------------------------------------------------------------------------
    def expected_sparsities(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Expected fractions of (heads, neurons, targeted weights) pruned."""
        heads = neurons = weights = 0
        n_heads = n_neurons = n_weights = 0
        for layer in self.layers:
            open_heads = expected_open(self.head_alpha[layer.name]).sum()
            open_neurons = expected_open(self.neuron_alpha[layer.name]).sum()
            hidden = layer.q.in_features
            heads, neurons = heads + open_heads, neurons + open_neurons
            weights = weights + open_heads * 4 * layer.head_size * hidden + open_neurons * 2 * hidden
            n_heads += layer.num_heads
            n_neurons += layer.num_neurons
            n_weights += 4 * layer.q.out_features * hidden + 2 * layer.num_neurons * hidden
        return 1 - heads / n_heads, 1 - neurons / n_neurons, 1 - weights / n_weights

    def loss_terms(self):
        if self.frozen:
            return {}
        s_heads, s_neurons, s_weights = self.expected_sparsities()
        terms = {}
        weight = self.current_penalty_weight()
        if weight:
            terms["penalty"] = weight * (1 - s_weights)
        # Before the window the target is 0 and the multipliers would only learn to hold the gates
        # open, which delays the pruning once the window opens.
        if self.options.lagrangian and self.step >= self.schedule.start_step:
            target = self.recipe.target_sparsity
            progress = min(1.0, self.schedule(self.step) / target) if target > 0 else 1.0
            head_target, neuron_target = self.targets()
            gap = torch.stack([s_heads - head_target * progress, s_neurons - neuron_target * progress])
            terms["lagrangian"] = (self.lambda_1 * gap).sum() + (self.lambda_2 * gap * gap).sum()
        return terms

    def update(self, sparsity):
        pass  # the Lagrangian follows the schedule every step; masks are fixed when the window closes

    def group_scores(self):
        detach = lambda alphas: {name: a.detach() for name, a in alphas.items()}  # noqa: E731
        return detach(self.head_alpha), detach(self.neuron_alpha)

    def on_freeze(self):
        for hook in self.hooks:  # from now on the exact masks alone decide
            hook.remove()
        self.hooks = []
        for alpha in [*self.head_alpha.values(), *self.neuron_alpha.values()]:
            alpha.requires_grad_(False)

    def param_groups(self):
        gates = [*self.head_alpha.values(), *self.neuron_alpha.values()]
        return gate_param_groups(gates, self.options, [self.lambda_1, self.lambda_2])

    def current_sparsity(self):
        if self.frozen:
            return super().current_sparsity()
        return self.expected_sparsities()[2].item()

    def state_summary(self):
        if self.frozen:
            return super().state_summary()
        s_heads, s_neurons, _ = self.expected_sparsities()
        (l1_heads, l1_neurons), (l2_heads, l2_neurons) = self.lambda_1.tolist(), self.lambda_2.tolist()
        return {"head_sparsity": s_heads.item(), "neuron_sparsity": s_neurons.item(), "lambda_1_heads": l1_heads,
                "lambda_1_neurons": l1_neurons, "lambda_2_heads": l2_heads, "lambda_2_neurons": l2_neurons}
