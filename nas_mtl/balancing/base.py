"""The balancer interface: turn per-task losses into parameter gradients."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch
from torch import nn

from ..registry import Registry


class Balancer(ABC):
    """Combines task losses into ``.grad`` on the network's parameters (one call per step).

    Subclasses implement :meth:`backward`; the trainer zeroes gradients before and steps the
    optimiser after. Balancers may use ``network.parameter_groups()`` to treat shared parameters
    (several tasks) differently from task-specific ones.
    """

    name: str = ""

    @abstractmethod
    def backward(self, losses: Mapping[str, torch.Tensor], network: nn.Module) -> dict[str, float]:
        """Populate gradients from ``losses`` (``{task: scalar}``); return the task weights used."""


BALANCERS: Registry[Balancer] = Registry("balancer")
register_balancer = BALANCERS.register
list_balancers = BALANCERS.names
create_balancer = BALANCERS.create
