"""Backbone registry: ``create_backbone(name, **kwargs)`` gives an ordered, splittable block list."""

from . import builtin, timm_models  # noqa: F401  (registration)
from .base import (
    Backbone,
    BlockInfo,
    LayerCosts,
    count_macs,
    create_backbone,
    list_backbones,
    register_backbone,
)

__all__ = [
    "Backbone",
    "BlockInfo",
    "LayerCosts",
    "count_macs",
    "create_backbone",
    "list_backbones",
    "register_backbone",
]
