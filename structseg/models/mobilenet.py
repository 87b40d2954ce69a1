"""MobileNetV2 (Sandler et al., 2018) whose parameter names match torchvision's ``mobilenet_v2``.

``MobileNetV2Backbone`` is an :class:`Encoder` with features at strides 2, 4, 8, 16 and 32
(``features.1, .3, .6, .13, .18``); with ``output_stride`` 16 or 8 the later strides become dilations.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .base import init_weights
from .encoder import Encoder, FeatureInfo


def conv_bn_relu6(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                  dilation: int = 1) -> nn.Sequential:
    pad = (kernel - 1) // 2 * dilation
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, pad, dilation=dilation, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, dilation: int = 1):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_relu6(cin, hidden, 1))
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden, dilation=dilation),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


# expansion t, channels c, repeats n, stride s (the paper's Table 2)
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class MobileNetV2Backbone(Encoder):
    def __init__(self, in_channels: int = 3, output_stride: int = 32):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        layers: list[nn.Module] = [conv_bn_relu6(in_channels, 32, 3, 2)]
        cin, stride_now, dilation = 32, 2, 1
        for t, c, n, s in SETTINGS:
            if stride_now >= output_stride and s > 1:
                dilation *= s
                s_eff = 1
            else:
                s_eff = s
                stride_now *= s
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s_eff if i == 0 else 1, t,
                                               dilation if i > 0 or s_eff == 1 else 1))
                cin = c
        layers.append(conv_bn_relu6(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.output_stride = output_stride
        self.feature_info = [FeatureInfo(min(s, output_stride), c, f"features.{i}")
                             for i, s, c in ((1, 2, 16), (3, 4, 24), (6, 8, 32), (13, 16, 96), (18, 32, 1280))]
        self._taps = {1, 3, 6, 13, 18}
        init_weights(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._taps:
                out.append(x)
        return out
