"""VGG-16 (and VGG-16-BN) encoder whose parameter names match torchvision's ``vgg16`` / ``vgg16_bn``.

``features.N`` are the 13 convolutions (with their BNs) at torchvision's indices. The encoder's
features are pool1..pool5 (strides 2-32). With ``fc=True`` (FCN's "convolutionalisation") the last
feature is fc7 instead: ``classifier.0`` and ``classifier.3`` are fc6/fc7 recast as 7x7 and 1x1
convolutions, so torchvision's ``Linear`` weights load by a reshape (``backbones.load_encoder_weights``).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .base import init_weights
from .encoder import Encoder, FeatureInfo

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


def pool_indices(features: nn.Sequential) -> list[int]:
    """Indices of the five max-pool layers in ``features`` (outputs at strides 2, 4, 8, 16, 32)."""
    return [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]


class VGG16Backbone(Encoder):
    """VGG-16 returning pool1..pool5 (strides 2-32), or pool1..pool4 and fc7 with ``fc=True``."""

    def __init__(self, in_channels: int = 3, batch_norm: bool = False, fc: bool = False, dropout: float = 0.5,
                 output_stride: int = 32):
        super().__init__()
        if output_stride != 32:
            raise ValueError("VGG-16 gives output_stride 32 only (it has no dilated variant here)")
        self.features = make_vgg_features(in_channels, batch_norm)
        self._pools = pool_indices(self.features)
        self.feature_info = [FeatureInfo(2 ** (k + 1), c, f"features.{i}")
                             for k, (i, c) in enumerate(zip(self._pools, (64, 128, 256, 512, 512)))]
        self.classifier = None
        if fc:
            self.classifier = nn.Sequential(
                nn.Conv2d(512, 4096, 7, padding=3), nn.ReLU(inplace=True), nn.Dropout2d(dropout),
                nn.Conv2d(4096, 4096, 1), nn.ReLU(inplace=True), nn.Dropout2d(dropout))
            self.feature_info[-1] = FeatureInfo(32, 4096, "classifier.4")
        init_weights(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._pools:
                out.append(x)
        if self.classifier is not None:
            out[-1] = self.classifier(x)
        return out
