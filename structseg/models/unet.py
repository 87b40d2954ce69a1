"""U-Net (Ronneberger et al., 2015) with batch norm, configurable width and depth.

Each level doubles the channels; the decoder upsamples (bilinear or transposed conv),
concatenates the encoder's skip and applies two 3x3 conv-BN-ReLU.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import SegmentationModel, conv_bn_relu, init_weights
from .encoder import FeatureInfo


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv_bn_relu(cin, cout), conv_bn_relu(cout, cout))


class UNet(SegmentationModel):
    """U-Net: ``depth`` poolings, ``base_channels`` at full resolution, ``dropout`` at the bottom."""

    classifier_module = "head"

    def __init__(self, num_classes: int, in_channels: int = 3, base_channels: int = 32, depth: int = 4,
                 bilinear: bool = True, dropout: float = 0.0):
        super().__init__()
        self.stride = 2 ** depth
        widths = [base_channels * 2 ** i for i in range(depth + 1)]
        self.encoder = nn.ModuleList([double_conv(in_channels, widths[0])] +
                                     [double_conv(widths[i], widths[i + 1]) for i in range(depth)])
        self.dropout = nn.Dropout2d(dropout) if dropout else nn.Identity()
        self.bilinear = bilinear
        self.up = nn.ModuleList([
            nn.Identity() if bilinear else nn.ConvTranspose2d(widths[i + 1], widths[i + 1], 2, stride=2)
            for i in reversed(range(depth))])
        self.decoder = nn.ModuleList([double_conv(widths[i + 1] + widths[i], widths[i])
                                      for i in reversed(range(depth))])
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        self.feature_info = [FeatureInfo(2 ** i, c, f"encoder.{i}") for i, c in enumerate(widths)]
        init_weights(self)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = self.dropout(skips.pop())
        for up, block in zip(self.up, self.decoder):
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False) \
                if self.bilinear else up(x)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)
