"""GLS, the Geometric Loss Strategy (Chennupati et al., "MultiNet++: Multi-Stream Feature Aggregation and
Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019, Eq. 4): minimise the geometric mean of the
task losses, ``(Π_t L_t)^(1/T)``, instead of their sum.

Its gradient is ``Σ_t G / (T L_t) · ∇L_t`` with ``G`` the geometric mean, so GLS is a loss weighting with weights
``w_t = G / (T L_t)`` recomputed every step from that step's losses: a task whose loss is small gets a large
weight (the product is scale-free: every task's *relative* progress counts the same). LibMTL's ``GLS`` computes
the same gradient by back-propagating ``torch.pow(losses.prod(), 1/T)``; here the weights are computed in float64
from the detached losses and one backward pass of ``Σ_t w_t L_t`` gives that gradient without the product's
underflow for many tasks. With one task the weight is 1 (equal weighting); a task absent from a step (no label)
is left out of that step's mean.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import nn

from .base import check_number, register_balancer
from .weighting import LossWeighting


@register_balancer("gls")
class GLS(LossWeighting):
    """Geometric Loss Strategy (Chennupati et al., CVPRW 2019): the gradient of the losses' geometric mean.

    Args:
        eps: losses below it count as ``eps`` (a loss that reaches 0 would make the geometric mean 0 and its own
            weight infinite); 1e-8 leaves every loss of a training run that has not converged exactly untouched.
    """

    name = "gls"

    def __init__(self, eps: float = 1e-8) -> None:
        self.eps = check_number(self.name, "eps", eps)
        if not self.eps > 0:
            raise ValueError(f"gls: eps must be > 0, got {eps}")

    def options(self) -> dict[str, Any]:
        return {"eps": self.eps}

    def weights_for(self, loss: Mapping[str, float], network: nn.Module) -> dict[str, float]:
        clamped = {t: max(float(v), self.eps) for t, v in loss.items()}
        log_mean = math.fsum(math.log(v) for v in clamped.values()) / len(clamped)
        return {t: math.exp(log_mean - math.log(v)) / len(clamped) for t, v in clamped.items()}


__all__ = ["GLS"]
