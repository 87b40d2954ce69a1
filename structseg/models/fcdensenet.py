"""FC-DenseNet, "the one hundred layers Tiramisu" (Jégou et al., CVPRW 2017).

A first 3x3 convolution (48 filters), ``n_pool`` dense blocks each followed by a transition down
(BN-ReLU-1x1 conv-dropout-max pool), a bottleneck dense block, then ``n_pool`` transitions up
(3x3 transposed conv, stride 2, applied only to the new feature maps of the previous block) each
concatenated with the skip and followed by a dense block, and a 1x1 classifier. A dense layer is
BN-ReLU-3x3 conv (``growth_rate`` maps)-dropout. Trained from scratch in the paper.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .base import SegmentationModel, init_weights


class DenseLayer(nn.Sequential):
    def __init__(self, cin: int, growth: int, dropout: float):
        super().__init__(nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, growth, 3, padding=1),
                         nn.Dropout2d(dropout))


class DenseBlock(nn.Module):
    """``n`` dense layers; returns the input concatenated with all new maps, or only the new maps."""

    def __init__(self, cin: int, growth: int, n: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList([DenseLayer(cin + i * growth, growth, dropout) for i in range(n)])

    def forward(self, x: torch.Tensor, new_only: bool = False) -> torch.Tensor:
        new = []
        for layer in self.layers:
            y = layer(x)
            x = torch.cat([x, y], 1)
            new.append(y)
        return torch.cat(new, 1) if new_only else x


class TransitionDown(nn.Sequential):
    def __init__(self, c: int, dropout: float):
        super().__init__(nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, c, 1), nn.Dropout2d(dropout),
                         nn.MaxPool2d(2))


class FCDenseNet(SegmentationModel):
    """FC-DenseNet with ``down_layers`` per down block, ``bottleneck_layers``, mirrored up blocks."""

    def __init__(self, num_classes: int, in_channels: int = 3, down_layers: tuple[int, ...] = (4, 5, 7, 10, 12),
                 bottleneck_layers: int = 15, growth_rate: int = 16, first_filters: int = 48,
                 dropout: float = 0.2):
        super().__init__()
        self.stride = 2 ** len(down_layers)
        k = growth_rate
        self.first = nn.Conv2d(in_channels, first_filters, 3, padding=1)
        c = first_filters
        self.down_blocks, self.trans_down, skip_channels = nn.ModuleList(), nn.ModuleList(), []
        for n in down_layers:
            self.down_blocks.append(DenseBlock(c, k, n, dropout))
            c += n * k
            skip_channels.append(c)
            self.trans_down.append(TransitionDown(c, dropout))
        self.bottleneck = DenseBlock(c, k, bottleneck_layers, dropout)
        prev_new = bottleneck_layers * k
        self.trans_up, self.up_blocks = nn.ModuleList(), nn.ModuleList()
        up_layers = list(reversed(down_layers))
        for i, n in enumerate(up_layers):
            self.trans_up.append(nn.ConvTranspose2d(prev_new, prev_new, 3, stride=2, padding=1, output_padding=1))
            c = prev_new + skip_channels[-1 - i]
            self.up_blocks.append(DenseBlock(c, k, n, dropout))
            prev_new = n * k
        self.head = nn.Conv2d(c + prev_new, num_classes, 1)
        init_weights(self)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(x)
        skips = []
        for block, down in zip(self.down_blocks, self.trans_down):
            x = block(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x, new_only=True)
        last = len(self.up_blocks) - 1
        for i, (up, block) in enumerate(zip(self.trans_up, self.up_blocks)):
            x = torch.cat([up(x), skips.pop()], 1)
            x = block(x, new_only=i < last)
        return self.head(x)
