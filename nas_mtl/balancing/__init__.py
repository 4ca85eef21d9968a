"""Loss balancing: one interface (:class:`Balancer`), a registry of methods."""

from . import equal, gls, gramian, mgda, pcgrad, weighting  # noqa: F401  (registration)
from .base import Balancer, create_balancer, list_balancers, parse_balancer, register_balancer
from .equal import EqualWeights
from .mgda import MGDA
from .min_norm import min_norm_2, min_norm_weights
from .pcgrad import PCGrad, pcgrad_weights

__all__ = [
    "MGDA",
    "Balancer",
    "EqualWeights",
    "PCGrad",
    "create_balancer",
    "list_balancers",
    "min_norm_2",
    "min_norm_weights",
    "parse_balancer",
    "pcgrad_weights",
    "register_balancer",
]
