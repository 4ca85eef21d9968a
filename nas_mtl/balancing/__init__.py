"""Loss balancing: one interface (:class:`Balancer`), a registry of methods."""

from . import equal  # noqa: F401  (registration)
from .base import Balancer, create_balancer, list_balancers, register_balancer
from .equal import EqualWeights

__all__ = ["Balancer", "EqualWeights", "create_balancer", "list_balancers", "register_balancer"]
