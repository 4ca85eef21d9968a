"""Backbone registry: ``create_backbone(name, **kwargs)`` gives an ordered, splittable block list."""

from . import base, builtin, timm_models  # noqa: F401  (registration)
from .base import *  # noqa: F403  (the package's public names are base's)

__all__ = base.__all__
