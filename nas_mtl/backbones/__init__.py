"""Backbone registry: ``create_backbone(name, **kwargs)`` gives an ordered, splittable block list."""

from . import base, builtin  # noqa: F401  (registration)
from .base import *  # noqa: F403  (the package's public names are base's)

TIMM_BACKBONES = ("timm_resnet", "timm_efficientnet", "timm_vit")
"""The backbones of :mod:`nas_mtl.backbones.timm_models`, imported the first time one is used (timm and the
torchvision it imports take seconds to import, which every command and worker process would pay)."""


def _timm_unavailable(err: Exception) -> str:
    """timm, or the torchvision it imports, cannot load beside this torch."""
    import torch

    why = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
    return (
        f"timm backbones are unavailable: importing timm failed ({why}); install the torchvision built for "
        f"torch {torch.__version__} (the built-in resnet_small works without it)"
    )


base.BACKBONES.register_lazy(TIMM_BACKBONES, f"{__name__}.timm_models", _timm_unavailable)

__all__ = [*base.__all__, "TIMM_BACKBONES"]
