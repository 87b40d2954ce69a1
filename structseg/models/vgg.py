"""VGG-16 feature extractor whose parameter names match torchvision's ``vgg16``.

``features.N`` are the 13 convolutions at torchvision's indices; ``classifier.0`` and
``classifier.3`` are fc6/fc7 recast as 7x7 and 1x1 convolutions (FCN's "convolutionalisation"),
so torchvision's ``Linear`` weights load by a reshape (see :func:`load_vgg16_weights`).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..data.io import load_torch_file
from ..errors import CheckpointError
from .base import init_weights

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


def load_vgg_features(features: nn.Sequential, path: str | Path, what: str = "VGG-16") -> list[str]:
    """Load the ``features.*`` entries of a torchvision VGG state dict into ``features``."""
    state = load_torch_file(path, "backbone weights file")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    own = {f"features.{k}": v for k, v in features.state_dict().items()}
    missing = [k for k in own if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a torchvision {what} state dict; missing {missing[:4]}"
                              f"{' ...' if len(missing) > 4 else ''}")
    for k, v in own.items():
        if state[k].shape != v.shape:
            raise CheckpointError(f"{path}: {k} has shape {tuple(state[k].shape)}; expected {tuple(v.shape)}")
    features.load_state_dict({k.removeprefix("features."): state[k] for k in own})
    return sorted(set(state) - set(own))


def load_vgg16_weights(backbone: VGG16Backbone, path: str | Path) -> list[str]:
    """Load a torchvision VGG-16 ImageNet state dict into ``backbone``; returns the keys skipped.

    ``classifier.0``/``classifier.3`` (``Linear``) are reshaped into the fc6/fc7 convolutions;
    ``classifier.6`` (the 1000-way ImageNet layer) is not used.
    """
    state = load_torch_file(path, "backbone weights file")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict (parameter name -> tensor)")
    own = backbone.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise CheckpointError(
            f"{path}: not a torchvision VGG-16 state dict; missing {missing[:4]}"
            f"{' ...' if len(missing) > 4 else ''}")
    new = {}
    for k, v in own.items():
        w = state[k]
        if w.numel() != v.numel():
            raise CheckpointError(f"{path}: {k} has shape {tuple(w.shape)}; expected {tuple(v.shape)} "
                                  "(first conv must match in_channels)")
        new[k] = w.reshape(v.shape).to(v.dtype)
    backbone.load_state_dict(new)
    return sorted(set(state) - set(own))
