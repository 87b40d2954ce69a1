"""Heads shared by the backbone-based models: ASPP, pyramid pooling, the FCN auxiliary head."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import conv_bn_relu


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabV3): 1x1, three dilated 3x3, image pooling -> 1x1."""

    def __init__(self, cin: int, rates: tuple[int, int, int], cout: int = 256, dropout: float = 0.5):
        super().__init__()
        branches = [conv_bn_relu(cin, cout, 1)]
        for r in rates:
            branches.append(nn.Sequential(nn.Conv2d(cin, cout, 3, padding=r, dilation=r, bias=False),
                                          nn.BatchNorm2d(cout), nn.ReLU(inplace=True)))
        self.branches = nn.ModuleList(branches)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False),
                                  nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
        self.project = nn.Sequential(conv_bn_relu(cout * (len(rates) + 2), cout, 1), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False))
        return self.project(torch.cat(outs, 1))


def _bin_weights(n, bins: int, like: torch.Tensor) -> torch.Tensor:
    """``(bins, n)``: row i averages positions [floor(i n / bins), ceil((i + 1) n / bins)), the cells of
    ``adaptive_avg_pool``."""
    j = torch.arange(n, device=like.device)[None]
    i = torch.arange(bins, device=like.device)[:, None]
    start, end = (i * n) // bins, ((i + 1) * n + bins - 1) // bins
    mask = ((j >= start) & (j < end)).to(like.dtype)
    return mask / mask.sum(1, keepdim=True)


class AdaptiveAvgPool(nn.Module):
    """``nn.AdaptiveAvgPool2d(bins)`` written as two averaging matrices built from the input's size: the same
    cells and values, and it exports to ONNX at dynamic sizes (the built-in pooling's exported index arithmetic
    is specialised to the example's size, and ONNX Runtime then fails or is wrong at other sizes)."""

    def __init__(self, bins: int):
        super().__init__()
        self.bins = bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _bin_weights(x.shape[-2], self.bins, x)
        cols = _bin_weights(x.shape[-1], self.bins, x)
        return torch.einsum("ih,nchw,jw->ncij", rows, x, cols)


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling module: pooled to bins x bins, 1x1 conv to cin/len(bins), upsampled."""

    def __init__(self, cin: int, bins: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        self.stages = nn.ModuleList([nn.Sequential(AdaptiveAvgPool(b), conv_bn_relu(cin, cin // len(bins), 1))
                                     for b in bins])
        self.channels = cin + (cin // len(bins)) * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return torch.cat([x] + [F.interpolate(s(x), size=size, mode="bilinear", align_corners=False)
                                for s in self.stages], 1)


class FCNHead(nn.Sequential):
    """3x3 conv-BN-ReLU, dropout, 1x1 classifier: the auxiliary head on an intermediate stage."""

    def __init__(self, cin: int, num_classes: int, dropout: float = 0.1):
        inner = max(cin // 4, 32)
        super().__init__(conv_bn_relu(cin, inner), nn.Dropout(dropout), nn.Conv2d(inner, num_classes, 1))
