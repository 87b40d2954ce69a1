"""The model zoo's builders: one small factory per name, uniform keywords (``num_classes``, ``in_channels``,
``backbone``, ``pretrained``, ``output_stride``, ``aux_head``) as in segmentation_models.pytorch.
``@register_model`` makes each one a name of ``create_model``; adding a model is adding a function here."""
from __future__ import annotations

from ..errors import ConfigError
from .backbone_models import (
    FPN,
    DeepLabV3,
    DeepLabV3Plus,
    PSPNet,
    RefineNet,
    UNetDecoder,
)
from .base import SegmentationModel
from .enet import ENet
from .fcdensenet import FCDenseNet
from .fcn import FCN
from .registry import register_model
from .segnet import SegNet
from .unet import UNet


@register_model
def fcn32s(num_classes: int, in_channels: int = 3, backbone: str = "vgg16", pretrained: bool | str = False,
           dropout: float = 0.5) -> FCN:
    return FCN(num_classes, in_channels, skips=0, dropout=dropout, backbone=backbone, pretrained=pretrained)


@register_model
def fcn16s(num_classes: int, in_channels: int = 3, backbone: str = "vgg16", pretrained: bool | str = False,
           dropout: float = 0.5) -> FCN:
    return FCN(num_classes, in_channels, skips=1, dropout=dropout, backbone=backbone, pretrained=pretrained)


@register_model
def fcn8s(num_classes: int, in_channels: int = 3, backbone: str = "vgg16", pretrained: bool | str = False,
          dropout: float = 0.5) -> FCN:
    return FCN(num_classes, in_channels, skips=2, dropout=dropout, backbone=backbone, pretrained=pretrained)


@register_model
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


@register_model
def fpn(num_classes: int, in_channels: int = 3, backbone: str = "efficientnet_lite0", pretrained: bool | str = False,
        output_stride: int = 32, aux_head: bool = False, decoder_channels: int = 128, dropout: float = 0.1) -> FPN:
    return FPN(num_classes, in_channels, backbone, output_stride, aux_head, decoder_channels, dropout, pretrained)


@register_model
def segnet(num_classes: int, in_channels: int = 3) -> SegNet:
    return SegNet(num_classes, in_channels)


@register_model
def enet(num_classes: int, in_channels: int = 3) -> ENet:
    return ENet(num_classes, in_channels)


@register_model
def fcdensenet56(num_classes: int, in_channels: int = 3, dropout: float = 0.2) -> FCDenseNet:
    return FCDenseNet(num_classes, in_channels, (4,) * 5, 4, growth_rate=12, dropout=dropout)


@register_model
def fcdensenet67(num_classes: int, in_channels: int = 3, dropout: float = 0.2) -> FCDenseNet:
    return FCDenseNet(num_classes, in_channels, (5,) * 5, 5, growth_rate=16, dropout=dropout)


@register_model
def fcdensenet103(num_classes: int, in_channels: int = 3, dropout: float = 0.2) -> FCDenseNet:
    return FCDenseNet(num_classes, in_channels, (4, 5, 7, 10, 12), 15, growth_rate=16, dropout=dropout)


@register_model
def deeplabv3(num_classes: int, in_channels: int = 3, backbone: str = "resnet50", pretrained: bool | str = False,
              output_stride: int = 8, aux_head: bool = False) -> DeepLabV3:
    return DeepLabV3(num_classes, in_channels, backbone, output_stride, aux_head, pretrained)


@register_model
def deeplabv3plus(num_classes: int, in_channels: int = 3, backbone: str = "resnet50", pretrained: bool | str = False,
                  output_stride: int = 16, aux_head: bool = False) -> DeepLabV3Plus:
    return DeepLabV3Plus(num_classes, in_channels, backbone, output_stride, aux_head, pretrained)


@register_model
def pspnet(num_classes: int, in_channels: int = 3, backbone: str = "resnet50", pretrained: bool | str = False,
           output_stride: int = 8, aux_head: bool = True) -> PSPNet:
    return PSPNet(num_classes, in_channels, backbone, output_stride, aux_head, pretrained)


@register_model
def refinenet(num_classes: int, in_channels: int = 3, backbone: str = "resnet50", pretrained: bool | str = False,
              output_stride: int = 32, aux_head: bool = False, features: int = 256) -> RefineNet:
    return RefineNet(num_classes, in_channels, backbone, output_stride, aux_head, features, pretrained)
