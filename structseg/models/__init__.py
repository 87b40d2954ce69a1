"""Model factory: ``create_model(name, num_classes, **kwargs)`` over a plain dict of builders."""
from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

from ..errors import ConfigError
from .base import SegmentationModel
from .backbone_models import FPN, DeepLabV3, DeepLabV3Plus, PSPNet, RefineNet, UNetDecoder
from .backbones import create_encoder, encoder_normalization, list_encoders
from .enet import ENet
from .fcdensenet import FCDenseNet
from .fcn import FCN
from .segnet import SegNet
from .unet import UNet


def fcn32s(num_classes: int, in_channels: int = 3, backbone: str = "vgg16", pretrained: bool | str = False,
           dropout: float = 0.5) -> FCN:
    return FCN(num_classes, in_channels, skips=0, dropout=dropout, backbone=backbone, pretrained=pretrained)


def fcn16s(num_classes: int, in_channels: int = 3, backbone: str = "vgg16", pretrained: bool | str = False,
           dropout: float = 0.5) -> FCN:
    return FCN(num_classes, in_channels, skips=1, dropout=dropout, backbone=backbone, pretrained=pretrained)


def fcn8s(num_classes: int, in_channels: int = 3, backbone: str = "vgg16", pretrained: bool | str = False,
          dropout: float = 0.5) -> FCN:
    return FCN(num_classes, in_channels, skips=2, dropout=dropout, backbone=backbone, pretrained=pretrained)


def unet(num_classes: int, in_channels: int = 3, backbone: str | None = None, pretrained: bool | str = False,
         output_stride: int = 32, decoder_channels: list[int] = (256, 128, 64, 32), base_channels: int = 32,
         depth: int = 4, bilinear: bool = True, dropout: float = 0.0) -> SegmentationModel:
    """U-Net: from scratch (``backbone=None``: ``base_channels``, ``depth``, ``bilinear``, ``dropout``), or a
    U-Net decoder (``decoder_channels``) on any backbone."""
    if backbone is None:
        if pretrained:
            raise ConfigError("unet: pretrained needs a backbone (e.g. backbone='efficientnet_lite0')")
        return UNet(num_classes, in_channels, base_channels, depth, bilinear, dropout)
    return UNetDecoder(num_classes, in_channels, backbone, output_stride, False, list(decoder_channels), pretrained)


def fpn(num_classes: int, in_channels: int = 3, backbone: str = "efficientnet_lite0", pretrained: bool | str = False,
        output_stride: int = 32, aux_head: bool = False, decoder_channels: int = 128, dropout: float = 0.1) -> FPN:
    return FPN(num_classes, in_channels, backbone, output_stride, aux_head, decoder_channels, dropout, pretrained)


def segnet(num_classes: int, in_channels: int = 3) -> SegNet:
    return SegNet(num_classes, in_channels)


def enet(num_classes: int, in_channels: int = 3) -> ENet:
    return ENet(num_classes, in_channels)


def fcdensenet56(num_classes: int, in_channels: int = 3, dropout: float = 0.2) -> FCDenseNet:
    return FCDenseNet(num_classes, in_channels, (4,) * 5, 4, growth_rate=12, dropout=dropout)


def fcdensenet67(num_classes: int, in_channels: int = 3, dropout: float = 0.2) -> FCDenseNet:
    return FCDenseNet(num_classes, in_channels, (5,) * 5, 5, growth_rate=16, dropout=dropout)


def fcdensenet103(num_classes: int, in_channels: int = 3, dropout: float = 0.2) -> FCDenseNet:
    return FCDenseNet(num_classes, in_channels, (4, 5, 7, 10, 12), 15, growth_rate=16, dropout=dropout)


def deeplabv3(num_classes: int, in_channels: int = 3, backbone: str = "resnet50", pretrained: bool | str = False,
              output_stride: int = 8, aux_head: bool = False) -> DeepLabV3:
    return DeepLabV3(num_classes, in_channels, backbone, output_stride, aux_head, pretrained)


def deeplabv3plus(num_classes: int, in_channels: int = 3, backbone: str = "resnet50", pretrained: bool | str = False,
                  output_stride: int = 16, aux_head: bool = False) -> DeepLabV3Plus:
    return DeepLabV3Plus(num_classes, in_channels, backbone, output_stride, aux_head, pretrained)


def pspnet(num_classes: int, in_channels: int = 3, backbone: str = "resnet50", pretrained: bool | str = False,
           output_stride: int = 8, aux_head: bool = True) -> PSPNet:
    return PSPNet(num_classes, in_channels, backbone, output_stride, aux_head, pretrained)


def refinenet(num_classes: int, in_channels: int = 3, backbone: str = "resnet50", pretrained: bool | str = False,
              output_stride: int = 32, aux_head: bool = False, features: int = 256) -> RefineNet:
    return RefineNet(num_classes, in_channels, backbone, output_stride, aux_head, features, pretrained)


MODELS: dict[str, Callable[..., SegmentationModel]] = {
    "deeplabv3": deeplabv3,
    "deeplabv3plus": deeplabv3plus,
    "pspnet": pspnet,
    "refinenet": refinenet,
    "fpn": fpn,
    "fcn32s": fcn32s,
    "fcn16s": fcn16s,
    "fcn8s": fcn8s,
    "unet": unet,
    "segnet": segnet,
    "enet": enet,
    "fcdensenet56": fcdensenet56,
    "fcdensenet67": fcdensenet67,
    "fcdensenet103": fcdensenet103,
}


def list_models() -> list[str]:
    return sorted(MODELS)


def model_arguments(name: str) -> dict[str, Any]:
    """The keyword arguments of model ``name`` and their defaults (``num_classes`` excluded)."""
    sig = inspect.signature(_builder(name))
    return {k: p.default for k, p in sig.parameters.items() if k != "num_classes"}


def _builder(name: str) -> Callable[..., SegmentationModel]:
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint}; available: {', '.join(list_models())}")
    return MODELS[name]


def create_model(name: str, num_classes: int, **kwargs: Any) -> SegmentationModel:
    """Build model ``name`` with ``num_classes`` outputs; unknown keyword arguments are an error."""
    allowed = model_arguments(name)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(f"model {name!r} has no argument(s) {unknown}; accepted: {sorted(allowed)}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    for key, value in kwargs.items():
        _check_argument(name, key, value)
    try:
        return _builder(name)(num_classes, **kwargs)
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError) as e:  # an argument the layers cannot take
        raise ConfigError(f"model {name!r} cannot be built with {kwargs}: {e}") from None


# keyword arguments that must be positive integers / probabilities, whatever the model
_POSITIVE_INTS = ("base_channels", "depth", "features", "decoder_channels", "in_channels")


def _check_argument(model: str, key: str, value: Any) -> None:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"model {model!r}: argument {key}={value!r} is out of range; expected {expected}")
    if key in _POSITIVE_INTS:
        values = value if isinstance(value, (list, tuple)) and key == "decoder_channels" else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
            raise bad("a positive integer" + (" or a list of them" if key == "decoder_channels" else ""))
    elif key == "dropout" and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                   and 0 <= value < 1):
        raise bad("a number in [0, 1)")
    elif key in ("aux_head", "bilinear") and not isinstance(value, bool):
        raise bad("true or false")
    elif key == "backbone" and value is not None and not isinstance(value, str):
        raise bad("a backbone name")


def load_backbone_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load ImageNet weights (a torchvision state dict) into the model's backbone."""
    if not hasattr(model, "load_backbone"):
        raise ConfigError(f"{type(model).__name__} has no pretrained backbone to load {path} into")
    return model.load_backbone(path)


__all__ = ["create_model", "list_models", "model_arguments", "load_backbone_weights", "SegmentationModel",
           "MODELS", "create_encoder", "list_encoders", "encoder_normalization"]
