"""Task heads: an image-level pooled head and a per-pixel dense head at the input size."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class DenseHead(nn.Module):
    """Per-pixel head: 3x3 conv + BN + ReLU + 1x1 conv, bilinearly upsampled to the input size.

    Args:
        in_channels: channels of the backbone feature map.
        out_channels: predicted channels per pixel.
        output_hw: (H, W) of the prediction (the network input's size).
        unit: L2-normalise the prediction over channels (surface normals).
    """

    def __init__(self, in_channels: int, out_channels: int, output_hw: tuple[int, int], unit: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 1),
        )
        self.output_hw = (int(output_hw[0]), int(output_hw[1]))
        self.unit = unit

    def forward(self, x: Tensor) -> Tensor:
        y = F.interpolate(self.body(x), size=self.output_hw, mode="bilinear", align_corners=False)
        return F.normalize(y, dim=1) if self.unit else y


def pooled_head(in_channels: int, out_features: int) -> nn.Module:
    """Image-level head: global average pool + Linear."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, out_features))


__all__ = ["DenseHead", "pooled_head"]
