"""FCN-32s, FCN-16s and FCN-8s (Long, Shelhamer and Darrell, CVPR 2015) on any backbone.

Score layers on the stride-32, -16 and -8 features (on VGG-16: fc7, pool4 and pool3, with fc6/fc7 as
convolutions, the paper's network); learned 2x/2x/8x (or 32x/16x) upsampling initialised to bilinear
interpolation; skip scores initialised to zero, as in the paper's "at-once" training. Instead of the
original 100-pixel input padding, inputs are padded to a multiple of 32 and cropped back.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ConfigError
from .backbone_models import BackboneModel, _index_at
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


def _zero_score(cin: int, num_classes: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, num_classes, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class FCN(BackboneModel):
    """FCN with ``skips`` = 0 (32s), 1 (16s, + the stride-16 feature) or 2 (8s, + stride 16 and 8)."""

    def __init__(self, num_classes: int, in_channels: int = 3, skips: int = 2, dropout: float = 0.5,
                 backbone: str = "vgg16", pretrained: bool | str = False, output_stride: int = 32,
                 aux_head: bool = False):
        if output_stride != 32:
            raise ConfigError("fcn: output_stride must be 32 (its upsampling layers are 2x, 2x and 8x)")
        encoder = None
        if backbone in ("vgg16", "vgg16_bn"):  # the paper's network: fc6/fc7 as convolutions
            encoder = VGG16Backbone(in_channels, batch_norm=backbone == "vgg16_bn", fc=True, dropout=dropout)
        super().__init__(num_classes, in_channels, backbone, output_stride, aux_head, encoder=encoder)
        if pretrained:
            from .backbones import installed_weights
            self.load_backbone(installed_weights(backbone) if pretrained is True else pretrained)
        self.skips = skips
        info = self.backbone.feature_info
        if info[-1].stride != 32:
            raise ConfigError(f"fcn: backbone {backbone!r} has no stride-32 feature map")
        self.score_fr = _zero_score(info[-1].channels, num_classes)
        if skips >= 1:
            self.i16 = _index_at(info, 16, "fcn16s")
            self.score_pool4 = _zero_score(info[self.i16].channels, num_classes)
            self.up2 = upsampler(num_classes, 2)
        if skips >= 2:
            self.i8 = _index_at(info, 8, "fcn8s")
            self.score_pool3 = _zero_score(info[self.i8].channels, num_classes)
            self.up2_pool4 = upsampler(num_classes, 2)
        self.up_final = upsampler(num_classes, {0: 32, 1: 16, 2: 8}[skips])

    def decode(self, feats):
        score = self.score_fr(feats[-1])
        if self.skips >= 1:
            score = self.up2(score) + self.score_pool4(feats[self.i16])
        if self.skips >= 2:
            score = self.up2_pool4(score) + self.score_pool3(feats[self.i8])
        return self.up_final(score)
