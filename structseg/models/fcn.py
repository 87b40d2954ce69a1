"""FCN-32s, FCN-16s and FCN-8s on VGG-16 (Long, Shelhamer and Darrell, CVPR 2015).

Score layers on fc7, pool4 and pool3; learned 2x/2x/8x (or 32x/16x) upsampling initialised
to bilinear interpolation; skip scores of pool4/pool3 initialised to zero, as in the paper's
"at-once" training. Instead of the original 100-pixel input padding, inputs are padded to a
multiple of 32 and cropped back by :class:`SegmentationModel`.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .base import SegmentationModel
from .vgg import VGG16Backbone


def bilinear_kernel(channels: int, kernel: int) -> torch.Tensor:
    """Weights of a per-channel bilinear upsampling transposed convolution."""
    factor = (kernel + 1) // 2
    centre = factor - 1 if kernel % 2 == 1 else factor - 0.5
    og = torch.arange(kernel, dtype=torch.float32)
    filt = 1 - (og - centre).abs() / factor
    w = torch.zeros(channels, channels, kernel, kernel)
    w[range(channels), range(channels)] = filt[:, None] * filt[None, :]
    return w


def upsampler(channels: int, factor: int) -> nn.ConvTranspose2d:
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False)
    up.weight.data.copy_(bilinear_kernel(channels, 2 * factor))
    return up


class FCN(SegmentationModel):
    """FCN on VGG-16 with ``skips`` = 0 (32s), 1 (16s, + pool4) or 2 (8s, + pool4 + pool3)."""

    stride = 32

    def __init__(self, num_classes: int, in_channels: int = 3, skips: int = 2, dropout: float = 0.5):
        super().__init__()
        self.skips = skips
        self.backbone = VGG16Backbone(in_channels, dropout)
        self.score_fr = nn.Conv2d(4096, num_classes, 1)
        nn.init.zeros_(self.score_fr.weight)
        nn.init.zeros_(self.score_fr.bias)
        if skips >= 1:
            self.score_pool4 = nn.Conv2d(512, num_classes, 1)
            self.up2 = upsampler(num_classes, 2)
            nn.init.zeros_(self.score_pool4.weight)
            nn.init.zeros_(self.score_pool4.bias)
        if skips >= 2:
            self.score_pool3 = nn.Conv2d(256, num_classes, 1)
            self.up2_pool4 = upsampler(num_classes, 2)
            nn.init.zeros_(self.score_pool3.weight)
            nn.init.zeros_(self.score_pool3.bias)
        self.up_final = upsampler(num_classes, {0: 32, 1: 16, 2: 8}[skips])

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        score = self.score_fr(f["fc7"])
        if self.skips >= 1:
            score = self.up2(score) + self.score_pool4(f["pool4"])
        if self.skips >= 2:
            score = self.up2_pool4(score) + self.score_pool3(f["pool3"])
        return self.up_final(score)

    def load_backbone(self, path) -> list[str]:
        from .vgg import load_vgg16_weights
        return load_vgg16_weights(self.backbone, path)
