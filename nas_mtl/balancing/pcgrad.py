"""PCGrad (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020, Algorithm 1).

For each task i, for the other tasks j in a uniformly random order: if ``g_i^PC · g_j < 0``, project
``g_i^PC ← g_i^PC − (g_i^PC · g_j) / ||g_j||² g_j`` (against the original ``g_j``); the update is
``Σ_i g_i^PC``, per shared parameter group (task-specific parameters: own gradient).

Every ``g_i^PC`` stays in the span of the original gradients, ``g_i^PC = Σ_m C[i, m] g_m``, so the
algorithm runs exactly on the T x T Gram matrix (``g_i^PC · g_j = (C G)[i, j]``) and the update is
``Σ_m w_m g_m`` with ``w = Cᵀ 1``: one pass over the gradients instead of T² vector operations.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import SeededGenerator, register_balancer
from .grouped import GroupedGradientBalancer


def pcgrad_weights(gram: np.ndarray, orders: np.ndarray) -> np.ndarray:
    """Weights ``w`` with ``Σ_i g_i^PC = Σ_m w_m g_m`` (Algorithm 1 on the Gram matrix).

    Args:
        gram: (T, T) Gram matrix of the task gradients.
        orders: (T, T) integer array; row i is a permutation of 0..T-1, the order in which task i is
            projected against the others (its own index is skipped).
    """
    g = np.asarray(gram, dtype=np.float64)
    n = g.shape[0]
    coef = np.eye(n)
    for i in range(n):
        row = coef[i]
        for j in orders[i]:
            if j == i:
                continue
            dot = float(row @ g[:, j])
            if dot < 0.0 and g[j, j] > 0.0:
                row[j] -= dot / g[j, j]
    return coef.sum(axis=0)


@register_balancer("pcgrad")
class PCGrad(GroupedGradientBalancer):
    """PCGrad (Yu et al., NeurIPS 2020): project each task's gradient off the others it conflicts with, then sum.

    Args:
        seed: seeds the balancer's own ``torch.Generator`` for the random projection orders (one
            fresh order per task, per shared group, per step); None (default): ``torch.initial_seed()``
            at the first step after :meth:`prepare`, i.e. the run's seed when torch was seeded
            (``train_graph`` seeds it with the config seed), so runs with different seeds draw
            different orders.

    :meth:`backward` returns ``w`` (the coefficient of each original task gradient in the update;
    1.0 for every task when nothing conflicts), as LibMTL does.
    """

    name = "pcgrad"

    def __init__(self, seed: int | None = None) -> None:
        self._random = SeededGenerator(seed, self.name)

    @property
    def seed(self) -> int | None:
        return self._random.seed

    def prepare(self, network: nn.Module) -> PCGrad:
        """Restart the order sequence: the next step seeds a fresh generator."""
        self._random.reset()
        return self

    def __repr__(self) -> str:
        return f"PCGrad(seed={self.seed})"

    def options(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def state_dict(self) -> dict[str, Any]:
        return self._random.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._random.load_state_dict(state)

    def group_weights(self, gram: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = gram.shape[0]
        orders = torch.rand(n, n, generator=self._random.get(), device="cpu").argsort(dim=1).numpy()
        w = pcgrad_weights(gram, orders)
        return w, w


__all__ = [
    "PCGrad",
    "pcgrad_weights",
]
