"""Built-in small ResNet-style CNN, fast enough to train on 2 CPU cores."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .base import Backbone, BlockInfo, register_backbone


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016): two 3x3 convs + shortcut (identity when shapes match)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.act = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    @property
    def has_identity_shortcut(self) -> bool:
        return self.downsample is None

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + shortcut)


def _stem(in_chans: int, width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_chans, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@register_backbone("resnet_small")
def resnet_small(
    in_chans: int = 3,
    input_size: Sequence[int] = (32, 32),
    widths: Sequence[int] = (16, 32, 64),
    depths: Sequence[int] = (2, 2, 2),
) -> Backbone:
    """A CIFAR-style ResNet: stem conv, then stages of BasicBlocks; each stage after the first halves H, W.

    Blocks are named ``stem``, ``s{stage}.b{block}``; a block is skippable iff its shortcut is the
    identity (stride 1, same width), as in AdaShare's ResNet search space.
    """
    widths, depths = tuple(int(w) for w in widths), tuple(int(d) for d in depths)
    if len(widths) != len(depths) or not widths:
        raise ValueError(f"resnet_small: widths {widths} and depths {depths} must be non-empty and of equal length")
    if any(w <= 0 for w in widths) or any(d <= 0 for d in depths):
        raise ValueError(f"resnet_small: widths {widths} and depths {depths} must be positive")
    infos = [BlockInfo("stem", False)]
    specs: list[tuple[int, int, int]] = []
    in_ch = widths[0]
    for s, (w, d) in enumerate(zip(widths, depths)):
        for b in range(d):
            stride = 2 if (s > 0 and b == 0) else 1
            specs.append((in_ch, w, stride))
            infos.append(BlockInfo(f"s{s}.b{b}", stride == 1 and in_ch == w))
            in_ch = w

    def make_blocks() -> list[nn.Module]:
        modules: list[nn.Module] = [_stem(in_chans, widths[0])]
        modules += [BasicBlock(i, o, st) for i, o, st in specs]
        for m in modules:
            _init(m)
        return modules

    h, w = (int(v) for v in input_size)
    return Backbone(
        "resnet_small",
        infos,
        (in_chans, h, w),
        make_blocks,
        config=dict(in_chans=in_chans, input_size=[h, w], widths=list(widths), depths=list(depths)),
    )


__all__ = [
    "BasicBlock",
    "resnet_small",
]
