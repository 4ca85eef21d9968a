"""Equal weighting: the gradient of the plain sum of task losses."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .base import Balancer, register_balancer


@register_balancer("equal")
class EqualWeights(Balancer):
    """Equal weighting (the uniform-scaling baseline of Sener & Koltun 2018 and others): the gradient of Σ_t L_t."""

    name = "equal"
    shared_only = True

    def backward(self, losses: Mapping[str, torch.Tensor], network: nn.Module) -> dict[str, float]:
        torch.stack(list(losses.values())).sum().backward()
        return dict.fromkeys(losses, 1.0)


__all__ = [
    "EqualWeights",
]
