"""SegNet (Badrinarayanan, Kendall and Cipolla, TPAMI 2017).

Encoder: the 13 convolutions of VGG-16 with batch norm (torchvision's ``vgg16_bn`` ``features``
names, so ImageNet weights load); each max pool keeps its argmax indices. Decoder: the mirror
image, where each stage *unpools* with the encoder's indices (no learned upsampling, no skip
features) and applies conv-BN-ReLU; the last convolution gives the class scores.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import SegmentationModel, conv_bn_relu, init_weights
from .vgg import make_vgg_features
from .weights import load_state_dict_file

# decoder convolutions per stage, deepest first (output channels); the final one is the classifier
DECODER = [[512, 512, 512], [512, 512, 256], [256, 256, 128], [128, 64], [64]]


class SegNet(SegmentationModel):
    stride = 32

    def __init__(self, num_classes: int, in_channels: int = 3):
        super().__init__()
        self.features = make_vgg_features(in_channels, batch_norm=True)
        for m in self.features:
            if isinstance(m, nn.MaxPool2d):
                m.return_indices, m.ceil_mode = True, False
        stages, c = [], 512
        for widths in DECODER:
            layers = []
            for w in widths:
                layers.append(conv_bn_relu(c, w))
                c = w
            stages.append(nn.Sequential(*layers))
        self.decoder = nn.ModuleList(stages)
        self.classifier = nn.Conv2d(c, num_classes, 3, padding=1)
        init_weights(self)

    def load_backbone(self, path) -> list[str]:
        """Load torchvision ``vgg16_bn`` ImageNet weights into the encoder."""
        holder = nn.Module()  # torchvision's keys are features.N
        holder.features = self.features
        return load_state_dict_file(holder, path, "torchvision vgg16_bn", allowed_unused=lambda k: k.startswith("classifier."))

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        pools = []
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                size = x.shape[-2:]
                x, idx = layer(x)
                pools.append((idx, size))
            else:
                x = layer(x)
        for stage in self.decoder:
            idx, size = pools.pop()
            x = stage(F.max_unpool2d(x, idx, 2, 2, output_size=size))
        return self.classifier(x)
