"""VGG-16 feature extractor whose parameter names match torchvision's ``vgg16``.

``features.N`` are the 13 convolutions at torchvision's indices; ``classifier.0`` and
``classifier.3`` are fc6/fc7 recast as 7x7 and 1x1 convolutions (FCN's "convolutionalisation"),
so torchvision's ``Linear`` weights load by a reshape (see :func:`load_vgg16_weights`).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from .base import init_weights
from .weights import load_torchvision_weights

VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def make_vgg_features(in_channels: int = 3, batch_norm: bool = False) -> nn.Sequential:
    """torchvision's ``vgg16`` (or ``vgg16_bn``) ``features``: same layers, same indices."""
    layers: list[nn.Module] = []
    c = in_channels
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        else:
            layers.append(nn.Conv2d(c, v, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            c = v
    return nn.Sequential(*layers)


# indices of the max-pool layers in ``features``: outputs at strides 2, 4, 8, 16, 32
POOL_INDICES = (4, 9, 16, 23, 30)


class VGG16Backbone(nn.Module):
    """VGG-16 returning pool3 (stride 8), pool4 (stride 16) and fc7 (stride 32) features."""

    def __init__(self, in_channels: int = 3, dropout: float = 0.5):
        super().__init__()
        self.features = make_vgg_features(in_channels)
        self.classifier = nn.Sequential(
            nn.Conv2d(512, 4096, 7, padding=3), nn.ReLU(inplace=True), nn.Dropout2d(dropout),
            nn.Conv2d(4096, 4096, 1), nn.ReLU(inplace=True), nn.Dropout2d(dropout))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == POOL_INDICES[2]:
                out["pool3"] = x
            elif i == POOL_INDICES[3]:
                out["pool4"] = x
        out["fc7"] = self.classifier(x)
        return out


def load_vgg16_weights(backbone: VGG16Backbone, path: str | Path) -> list[str]:
    """Load a torchvision VGG-16 ImageNet state dict into ``backbone``; returns the keys skipped.

    ``classifier.0``/``classifier.3`` (``Linear``) are reshaped into the fc6/fc7 convolutions;
    ``classifier.6`` (the 1000-way ImageNet layer) is not used.
    """
    return load_torchvision_weights(backbone, path, "VGG-16", reshape=True)
