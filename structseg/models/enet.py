"""ENet (Paszke et al., 2016): a real-time encoder-decoder of bottleneck modules.

Initial block (3x3 stride-2 conv with 13 filters next to a max pool); stage 1 downsamples to 64
channels; stages 2-3 (128 channels) mix regular, dilated (2, 4, 8, 16) and asymmetric (5x1, 1x5)
bottlenecks; stages 4-5 upsample with the encoder's pooling indices; a final transposed
convolution restores full resolution. PReLU in the encoder, ReLU in the decoder; spatial dropout
0.01 in stage 1 and 0.1 after.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import SegmentationModel, init_weights


def _act(relu: bool) -> nn.Module:
    return nn.ReLU(inplace=True) if relu else nn.PReLU()


def _cba(cin: int, cout: int, kernel, stride=1, padding=0, dilation=1, relu=False, act=True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, padding, dilation, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(_act(relu))
    return nn.Sequential(*layers)


class InitialBlock(nn.Module):
    def __init__(self, cin: int, cout: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout - cin, 3, stride=2, padding=1, bias=False)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(torch.cat([self.conv(x), self.pool(x)], 1)))


class Bottleneck(nn.Module):
    """Regular, dilated or asymmetric bottleneck: 1x1 projection, main conv, 1x1 expansion, dropout."""

    def __init__(self, c: int, dilation: int = 1, asymmetric: bool = False, dropout: float = 0.1,
                 relu: bool = False):
        super().__init__()
        inner = c // 4
        if asymmetric:
            main = nn.Sequential(_cba(inner, inner, (5, 1), padding=(2, 0), relu=relu),
                                 _cba(inner, inner, (1, 5), padding=(0, 2), relu=relu))
        else:
            main = _cba(inner, inner, 3, padding=dilation, dilation=dilation, relu=relu)
        self.branch = nn.Sequential(_cba(c, inner, 1, relu=relu), main, _cba(inner, c, 1, relu=relu),
                                    nn.Dropout2d(dropout))
        self.act = _act(relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.branch(x))


class DownBottleneck(nn.Module):
    """Max pool (indices kept) + zero channel padding, beside a 2x2-stride-2 projection branch."""

    def __init__(self, cin: int, cout: int, dropout: float):
        super().__init__()
        inner = cout // 4  # as in the authors' Torch code (internal = output / 4)
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.branch = nn.Sequential(_cba(cin, inner, 2, stride=2), _cba(inner, inner, 3, padding=1),
                                    _cba(inner, cout, 1), nn.Dropout2d(dropout))
        self.act = nn.PReLU()
        self.extra = cout - cin

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        main, idx = self.pool(x)
        main = F.pad(main, (0, 0, 0, 0, 0, self.extra))
        return self.act(main + self.branch(x)), idx


class UpBottleneck(nn.Module):
    """1x1 conv + max unpooling with the encoder's indices, beside a transposed-conv branch."""

    def __init__(self, cin: int, cout: int, dropout: float):
        super().__init__()
        inner = cout // 4  # as in the authors' Torch code (internal = output / 4)
        self.main = _cba(cin, cout, 1, act=False)
        self.branch = nn.Sequential(
            _cba(cin, inner, 1, relu=True),
            nn.ConvTranspose2d(inner, inner, 2, stride=2, bias=False), nn.BatchNorm2d(inner), nn.ReLU(inplace=True),
            _cba(inner, cout, 1, act=False), nn.Dropout2d(dropout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        # inputs are padded to a multiple of the stride, so unpooling doubles the size exactly (no output_size:
        # a symbolic one is what keeps torch.export from exporting ENet at dynamic sizes)
        main = F.max_unpool2d(self.main(x), idx, 2, 2)
        return self.act(main + self.branch(x))


def _stage(c: int, dropout: float) -> nn.Sequential:
    """Stages 2 and 3 after their first module: regular, dilated 2, asymmetric, dilated 4, ..."""
    return nn.Sequential(
        Bottleneck(c, dropout=dropout), Bottleneck(c, 2, dropout=dropout), Bottleneck(c, asymmetric=True, dropout=dropout),
        Bottleneck(c, 4, dropout=dropout), Bottleneck(c, dropout=dropout), Bottleneck(c, 8, dropout=dropout),
        Bottleneck(c, asymmetric=True, dropout=dropout), Bottleneck(c, 16, dropout=dropout))


class ENet(SegmentationModel):
    stride = 8

    def __init__(self, num_classes: int, in_channels: int = 3):
        super().__init__()
        self.initial = InitialBlock(in_channels, 16)
        self.down1 = DownBottleneck(16, 64, 0.01)
        self.stage1 = nn.Sequential(*[Bottleneck(64, dropout=0.01) for _ in range(4)])
        self.down2 = DownBottleneck(64, 128, 0.1)
        self.stage2 = _stage(128, 0.1)
        self.stage3 = _stage(128, 0.1)
        self.up4 = UpBottleneck(128, 64, 0.1)
        self.stage4 = nn.Sequential(Bottleneck(64, relu=True), Bottleneck(64, relu=True))
        self.up5 = UpBottleneck(64, 16, 0.1)
        self.stage5 = Bottleneck(16, relu=True)
        self.full_conv = nn.ConvTranspose2d(16, num_classes, 3, stride=2, padding=1, output_padding=1, bias=False)
        init_weights(self)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        x = self.initial(x)
        x, i1 = self.down1(x)
        x = self.stage1(x)
        x, i2 = self.down2(x)
        x = self.stage3(self.stage2(x))
        x = self.stage4(self.up4(x, i2))
        x = self.stage5(self.up5(x, i1))
        return self.full_conv(x)  # 2x exactly: (n - 1) * 2 - 2 + 3 + 1
