"""The balancer interface: turn per-task losses into parameter gradients."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping

import torch
from torch import nn


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


_REGISTRY: dict[str, Callable[..., Balancer]] = {}


def register_balancer(name: str) -> Callable[[Callable[..., Balancer]], Callable[..., Balancer]]:
    """Decorator: make a balancer factory available as ``create_balancer(name, ...)``."""

    def deco(factory: Callable[..., Balancer]) -> Callable[..., Balancer]:
        if name in _REGISTRY:
            raise ValueError(f"balancer {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return deco


def list_balancers() -> list[str]:
    return sorted(_REGISTRY)


def create_balancer(name: str, **kwargs) -> Balancer:
    if name not in _REGISTRY:
        raise ValueError(f"unknown balancer {name!r}; known: {', '.join(list_balancers())}")
    factory = _REGISTRY[name]
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as err:
        raise TypeError(f"balancer {name!r}: {err}") from None
    return factory(**kwargs)
