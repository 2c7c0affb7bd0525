"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune").

Every ``update_every`` steps of the pruning window, the smallest |W| are masked until the
schedule's sparsity is reached. Masked weights keep their values underneath the mask, so a
weight that grows back above the threshold can return (as in AGP's TensorFlow implementation).
"""

from bermo_prune.pruning.base import Pruner
from bermo_prune.pruning.registry import register_pruner


@register_pruner
class MagnitudePruner(Pruner):
    name = "magnitude"

    def scores(self):
        return {name: w.abs() for name, w in self.weights().items()}
