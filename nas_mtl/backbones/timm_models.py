"""timm models split into blocks: ResNet, EfficientNet/MobileNet and ViT families.

Each backbone builds a timm model (``pretrained=False``, so timm's own initialisation) and splits the
path of its ``forward_features`` into blocks that hold the model's own submodules (no copies): running
the blocks in order reproduces ``forward_features`` exactly.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import timm
import torch
from timm.models.efficientnet import EfficientNet
from timm.models.mobilenetv3 import MobileNetV3
from timm.models.resnet import ResNet
from timm.models.vision_transformer import (
    Block,
    DiffParallelScalingBlock,
    ParallelScalingBlock,
    ParallelThingsBlock,
    ResPostBlock,
    VisionTransformer,
)
from torch import nn

from .base import Backbone, BlockInfo, register_backbone

# Residual transformer blocks (x + f(x) for every branch): shape-preserving with an identity shortcut.
_VIT_RESIDUAL_BLOCKS = (Block, ResPostBlock, ParallelScalingBlock, DiffParallelScalingBlock, ParallelThingsBlock)
# Set by the backbone itself: weights are always freshly initialised on CPU, image size comes from input_size.
_RESERVED_KWARGS = ("pretrained", "checkpoint_path", "device", "dtype", "img_size")

_Split = list[tuple[str, nn.Module, bool]]  # (block name, module, skippable)


class ViTEmbed(nn.Module):
    """What ``VisionTransformer.forward_features`` runs before its blocks.

    Patch embedding, prefix (class/register) tokens + position embedding, patch dropout and pre-norm,
    holding the ViT's own modules and parameters.
    """

    def __init__(self, vit: VisionTransformer) -> None:
        super().__init__()
        self.patch_embed = vit.patch_embed
        self.cls_token = vit.cls_token
        self.reg_token = vit.reg_token
        self.pos_embed = vit.pos_embed
        self.pos_drop = vit.pos_drop
        self.patch_drop = vit.patch_drop
        self.norm_pre = vit.norm_pre
        self.num_prefix_tokens = vit.num_prefix_tokens
        self.no_embed_class = vit.no_embed_class
        self.dynamic_img_size = vit.dynamic_img_size

    # timm's own code (it reads only the attributes set above), so the embedding matches exactly
    _pos_embed = VisionTransformer._pos_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))


class TokensToMap(nn.Module):
    """Non-parametric ViT neck: tokens (B, N, D) -> (B, D, h, w), dropping the prefix tokens."""

    def __init__(self, num_prefix_tokens: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.grid = (int(grid[0]), int(grid[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, d = x.shape
        return x[:, self.num_prefix_tokens :].transpose(1, 2).reshape(b, d, *self.grid)

    def extra_repr(self) -> str:
        return f"num_prefix_tokens={self.num_prefix_tokens}, grid={self.grid}"


def _split_resnet(model: ResNet) -> _Split:
    stem = nn.Sequential(OrderedDict(conv1=model.conv1, bn1=model.bn1, act1=model.act1, maxpool=model.maxpool))
    blocks: _Split = [("stem", stem, False)]
    for layer in ("layer1", "layer2", "layer3", "layer4"):
        for i, block in enumerate(getattr(model, layer)):
            # timm adds the shortcut unchanged exactly when the block has no downsample projection
            identity = hasattr(block, "downsample") and block.downsample is None
            blocks.append((f"{layer}.{i}", block, identity))
    return blocks


def _split_efficientnet(model: EfficientNet | MobileNetV3) -> _Split:
    blocks: _Split = [("stem", nn.Sequential(OrderedDict(conv_stem=model.conv_stem, bn1=model.bn1)), False)]
    for s, stage in enumerate(model.blocks):
        for i, block in enumerate(stage):
            blocks.append((f"blocks.{s}.{i}", block, bool(getattr(block, "has_skip", False))))
    # MobileNetV3's conv_head runs after pooling (forward_head); EfficientNet's is Identity if num_features=0
    if isinstance(model, EfficientNet) and not isinstance(model.conv_head, nn.Identity):
        head = nn.Sequential(OrderedDict(conv_head=model.conv_head, bn2=model.bn2))
        blocks.append(("head_conv", head, False))
    return blocks


def _split_vit(model: VisionTransformer) -> _Split:
    blocks: _Split = [("embed", ViTEmbed(model), False)]
    blocks += [(f"blocks.{i}", b, isinstance(b, _VIT_RESIDUAL_BLOCKS)) for i, b in enumerate(model.blocks)]
    if not isinstance(model.norm, nn.Identity):  # Identity when the norm moves after pooling (fc_norm)
        blocks.append(("norm", model.norm, False))
    return blocks


def _vit_neck(model: VisionTransformer, input_size: tuple[int, ...]) -> nn.Module:
    return TokensToMap(model.num_prefix_tokens, model.patch_embed.dynamic_feat_size(input_size))


@dataclass(frozen=True)
class _Family:
    name: str  # registry name
    kind: str  # for errors: "{model} is not {kind} timm model"
    classes: tuple[type[nn.Module], ...]  # exact timm classes whose forward_features the split reproduces
    examples: tuple[str, ...]
    split: Callable[[Any], _Split]
    neck: Callable[[Any, tuple[int, ...]], nn.Module] | None = None
    takes_img_size: bool = False


_FAMILIES = MappingProxyType(
    {
        f.name: f
        for f in (
            _Family(
                "timm_resnet", "a ResNet-family", (ResNet,), ("resnet18", "resnet50", "resnext50_32x4d"), _split_resnet
            ),
            _Family(
                "timm_efficientnet",
                "an EfficientNet/MobileNet-family",
                (EfficientNet, MobileNetV3),
                ("efficientnet_b0", "mobilenetv2_100", "mobilenetv3_small_100"),
                _split_efficientnet,
            ),
            _Family(
                "timm_vit",
                "a ViT (VisionTransformer)",
                (VisionTransformer,),
                ("vit_tiny_patch16_224", "vit_small_patch16_224", "deit_tiny_patch16_224"),
                _split_vit,
                neck=_vit_neck,
                takes_img_size=True,
            ),
        )
    }
)


@dataclass(frozen=True)
class TimmTrunk:
    """A timm model and the blocks split from it.

    ``modules`` are the model's own submodules (no copies): running them in order, then ``neck``, gives
    ``model.forward_features(x)`` (for ViTs reshaped to a (B, D, h, w) map).
    """

    model: nn.Module
    blocks: tuple[BlockInfo, ...]
    modules: tuple[nn.Module, ...]
    neck: nn.Module


def _create_trunk(
    family: _Family, model: str, in_chans: int, input_size: Sequence[int], timm_kwargs: dict, device: str
) -> TimmTrunk:
    if not isinstance(model, str) or not timm.is_model(model):
        raise ValueError(
            f"{family.name}: {model!r} is not {family.kind} timm model (timm does not know it); "
            f"e.g. {', '.join(family.examples)}"
        )
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"{family.name}: in_chans must be a positive int, got {in_chans!r}")
    size = tuple(input_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"{family.name}: input_size must be two positive ints (H, W), got {input_size!r}")
    for key in _RESERVED_KWARGS:
        if key in timm_kwargs:
            raise ValueError(
                f"{family.name}: {key}={timm_kwargs[key]!r} is not accepted: nothing is downloaded (pretrained "
                "weights come from a local file: weights=PATH) and the image size comes from input_size"
            )
    extra = {"img_size": size} if family.takes_img_size else {}
    try:
        kwargs = {"num_classes": 0, **timm_kwargs, **extra}
        net = timm.create_model(model, pretrained=False, in_chans=in_chans, device=device, **kwargs)
    except TypeError as err:
        raise TypeError(f"{family.name}: timm.create_model({model!r}) rejected the arguments: {err}") from err
    if type(net) not in family.classes:
        raise ValueError(
            f"{family.name}: {model!r} is not {family.kind} timm model (timm builds a {type(net).__name__}; "
            f"supported: {', '.join(c.__name__ for c in family.classes)}); e.g. {', '.join(family.examples)}"
        )
    if isinstance(net, VisionTransformer) and not isinstance(net.patch_drop, nn.Identity):
        raise ValueError(f"{family.name}: patch_drop_rate > 0 drops tokens, so the patch grid is lost; use 0")
    split = family.split(net)
    return TimmTrunk(
        model=net,
        blocks=tuple(BlockInfo(name, skippable) for name, _, skippable in split),
        modules=tuple(module for _, module, _ in split),
        neck=family.neck(net, size) if family.neck is not None else nn.Identity(),
    )


def timm_trunk(backbone: str, **config: Any) -> TimmTrunk:
    """A timm model split into blocks, for a registered timm backbone's ``config``: freshly initialised, or with
    the local ``weights`` file's parameters.

    ``timm_trunk(bb.name, **bb.config)`` builds what ``bb.build()`` returns, together with the timm model
    the blocks came from.
    """
    if backbone not in _FAMILIES:
        raise ValueError(f"unknown timm backbone {backbone!r}; known: {', '.join(_FAMILIES)}")
    family = _FAMILIES[backbone]
    config = dict(config)
    try:
        model, in_chans, input_size = config.pop("model"), config.pop("in_chans"), config.pop("input_size")
    except KeyError as err:
        raise ValueError(f"{backbone}: config lacks {err.args[0]!r}") from None
    weights = config.pop("weights", None)
    trunk = _create_trunk(family, model, in_chans, input_size, config, device="cpu")
    if weights is not None:
        load_weights(trunk.model, weights)
    return trunk


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local weights file into ``model`` (no download): ``.safetensors``, or a ``torch.save`` state dict
    (plain, or under ``state_dict`` / ``model``), as timm and torchvision publish them. Keys the model lacks
    (a classifier head) are ignored; a parameter or buffer the file lacks, or one of another shape, raises
    ValueError naming the file and the first such key."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights: file not found: {path}")
    state = _read_weights(str(path.resolve()), path.stat().st_mtime_ns)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ValueError(f"weights {path}: no {missing[0]!r}{more} for this model (another architecture?)")
    for key, tensor in own.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ValueError(
                f"weights {path}: {key!r} is {tuple(state[key].shape)} in the file, {tuple(tensor.shape)} in the "
                "model (in_chans or model options?)"
            )
    model.load_state_dict({k: state[k] for k in own})


@functools.lru_cache(maxsize=4)
def _read_weights(path: str, mtime_ns: int) -> dict[str, torch.Tensor]:
    """The file's tensors, read once per file version (every block copy of a network loads them)."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state: Any = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"weights {path}: not a weights file ({type(err).__name__}: {err})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights {path}: expected a state dict of tensors")
    return state


def _timm_backbone(
    backbone: str,
    model: str,
    in_chans: int,
    input_size: Sequence[int],
    timm_kwargs: dict,
    weights: str | None = None,
) -> Backbone:
    # the structure comes from a parameter-free probe on the meta device (fast even for large models)
    probe = _create_trunk(_FAMILIES[backbone], model, in_chans, input_size, timm_kwargs, device="meta")
    h, w = input_size
    config = dict(model=model, in_chans=in_chans, input_size=[h, w], **timm_kwargs)
    if weights is not None:
        if not Path(weights).is_file():
            raise ValueError(f"weights: file not found: {weights}")
        config["weights"] = str(Path(weights).resolve())

    def make_blocks() -> list[nn.Module]:
        return list(timm_trunk(backbone, **config).modules)

    return Backbone(backbone, probe.blocks, (in_chans, h, w), make_blocks, neck=probe.neck, config=config)


@register_backbone("timm_resnet")
def timm_resnet(
    model: str = "resnet18",
    in_chans: int = 3,
    input_size: Sequence[int] = (64, 64),
    weights: str | None = None,
    **timm_kwargs: Any,
) -> Backbone:
    """A timm ResNet (resnet18/26/34/50, resnext, seresnet, ...): ``stem``, residual blocks ``layer{k}.{i}``.

    A block is skippable iff it has no downsample projection (identity shortcut, shape-preserving).
    ``timm_kwargs`` go to ``timm.create_model``; the features are the final (B, C, H/32, W/32) map.
    ``weights``: a local file of pretrained parameters every block copy starts from (:func:`load_weights`;
    in a search-space file, relative to it).
    """
    return _timm_backbone("timm_resnet", model, in_chans, input_size, timm_kwargs, weights)


@register_backbone("timm_efficientnet")
def timm_efficientnet(
    model: str = "efficientnet_b0",
    in_chans: int = 3,
    input_size: Sequence[int] = (64, 64),
    weights: str | None = None,
    **timm_kwargs: Any,
) -> Backbone:
    """A timm EfficientNet / MobileNetV2 / MobileNetV3: ``stem``, ``blocks.{stage}.{i}``, ``head_conv``.

    ``head_conv`` (conv_head + bn2) exists for the EfficientNet class only (and not with num_features=0):
    MobileNetV3's features end at its last block (its conv_head follows global pooling). A block is
    skippable iff timm set ``has_skip``.
    """
    return _timm_backbone("timm_efficientnet", model, in_chans, input_size, timm_kwargs, weights)


@register_backbone("timm_vit")
def timm_vit(
    model: str = "vit_tiny_patch16_224",
    in_chans: int = 3,
    input_size: Sequence[int] = (64, 64),
    weights: str | None = None,
    **timm_kwargs: Any,
) -> Backbone:
    """A timm ViT (Dosovitskiy et al. 2021) at ``img_size=input_size``: ``embed``, ``blocks.{i}``, ``norm``.

    Every transformer block is residual, hence skippable; ``norm`` is absent when timm moves it after
    pooling (``global_pool="avg"``, fc_norm). The neck drops the prefix tokens and reshapes
    the patch tokens to a (B, D, H/patch, W/patch) map. E.g. ``timm_vit(input_size=(32, 32),
    patch_size=8, depth=4, embed_dim=64, num_heads=2)``.
    """
    return _timm_backbone("timm_vit", model, in_chans, input_size, timm_kwargs, weights)


__all__ = [
    "TimmTrunk",
    "TokensToMap",
    "ViTEmbed",
    "timm_efficientnet",
    "timm_resnet",
    "timm_trunk",
    "timm_vit",
    "load_weights",
]
