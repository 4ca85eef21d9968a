"""Backbone registry: ``create_backbone(name, **kwargs)`` gives an ordered, splittable block list."""

from . import base, builtin  # noqa: F401  (registration)
from .base import *  # noqa: F403  (the package's public names are base's)

TIMM_BACKBONES = ("timm_resnet", "timm_efficientnet", "timm_vit")
"""The backbones of :mod:`nas_mtl.backbones.timm_models`."""

try:
    from . import timm_models  # noqa: F401  (registration)
except Exception as _err:  # timm, or the torchvision it imports, cannot load beside this torch
    _why = next((line for line in str(_err).splitlines() if line.strip()), type(_err).__name__)

    def _unavailable(*_args: object, _why: str = _why, **_kwargs: object) -> base.Backbone:
        import torch

        raise ValueError(
            f"timm backbones are unavailable: importing timm failed ({_why}); install the torchvision built for "
            f"torch {torch.__version__} (the built-in resnet_small works without it)"
        )

    for _name in TIMM_BACKBONES:
        base.register_backbone(_name)(_unavailable)

__all__ = [*base.__all__, "TIMM_BACKBONES"]
