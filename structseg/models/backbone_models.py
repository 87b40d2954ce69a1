"""Encoder-decoder models on any backbone: DeepLabV3, DeepLabV3+, PSPNet, RefineNet, FPN, U-Net, FCN.

All take the same keywords as smp's: ``backbone`` (any name of :func:`list_encoders`), ``pretrained``
(True: the installed ImageNet weights; or a weights file), ``output_stride`` and ``aux_head``. The heads
read the encoder's feature list (ordered by stride, described by ``feature_info``), never its layer names.
With an auxiliary head, ``model(x, return_aux=True)`` also returns the auxiliary logits (an FCN head on
the second-deepest feature map; the trainer weights its loss by ``train.aux_weight``).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from .backbones import create_encoder, load_encoder_weights
from .base import SegmentationModel, conv_bn_relu, init_weights
from .encoder import FeatureInfo
from .heads import ASPP, FCNHead, PyramidPooling


class BackboneModel(SegmentationModel):
    """Shared plumbing: an :class:`Encoder`, the optional auxiliary head, ImageNet weight loading."""

    def __init__(self, num_classes: int, in_channels: int, backbone: str, output_stride: int, aux_head: bool,
                 pretrained: bool | str = False, encoder=None):
        super().__init__()
        if encoder is None:
            encoder = create_encoder(backbone, in_channels, output_stride, pretrained)
        self.backbone = encoder
        self.backbone_name = backbone
        self.stride = 32
        info = self.backbone.feature_info
        self.aux = FCNHead(info[-2].channels, num_classes) if aux_head else None

    @property
    def feature_info(self) -> list[FeatureInfo]:
        """The encoder's feature maps, with module names relative to this model (``backbone.*``)."""
        return [FeatureInfo(f.stride, f.channels, f"backbone.{f.module}") for f in self.backbone.feature_info]

    def load_backbone(self, path: str | Path) -> list[str]:
        """Load ImageNet weights (torchvision's ``.pth``, or the EfficientNet-Lite files) into the backbone."""
        return load_encoder_weights(self.backbone, path, self.backbone_name)

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        """Logits (at any stride) from the encoder's feature list."""
        raise NotImplementedError

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.backbone(x))

    def forward_padded_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = self.backbone(x)
        return self.decode(feats), ([self.aux(feats[-2])] if self.aux is not None else [])


def _index_at(info, stride: int, what: str) -> int:
    idx = [i for i, f in enumerate(info) if f.stride == stride]
    if not idx:
        raise ConfigError(f"{what} needs a stride-{stride} feature map; the backbone gives strides "
                          f"{[f.stride for f in info]}")
    return idx[-1]


class DeepLabV3(BackboneModel):
    """DeepLabV3 (Chen et al., 2017): dilated backbone + ASPP + 3x3 conv + classifier."""

    classifier_module = "head.2"

    def __init__(self, num_classes: int, in_channels: int = 3, backbone: str = "resnet50", output_stride: int = 8,
                 aux_head: bool = False, pretrained: bool | str = False):
        super().__init__(num_classes, in_channels, backbone, output_stride, aux_head, pretrained)
        rates = (12, 24, 36) if output_stride == 8 else (6, 12, 18)
        self.head = nn.Sequential(ASPP(self.backbone.feature_info[-1].channels, rates), conv_bn_relu(256, 256),
                                  nn.Conv2d(256, num_classes, 1))
        init_weights(self.head)

    def decode(self, feats):
        return self.head(feats[-1])


class DeepLabV3Plus(BackboneModel):
    """DeepLabV3+ (Chen et al., 2018): ASPP at stride 16 + a decoder with stride-4 low-level features."""

    classifier_module = "decoder.2"

    def __init__(self, num_classes: int, in_channels: int = 3, backbone: str = "resnet50", output_stride: int = 16,
                 aux_head: bool = False, pretrained: bool | str = False):
        super().__init__(num_classes, in_channels, backbone, output_stride, aux_head, pretrained)
        rates = (12, 24, 36) if output_stride == 8 else (6, 12, 18)
        self.low = _index_at(self.backbone.feature_info, 4, "deeplabv3plus")
        self.aspp = ASPP(self.backbone.feature_info[-1].channels, rates, dropout=0.1)
        self.reduce = conv_bn_relu(self.backbone.feature_info[self.low].channels, 48, 1)
        self.decoder = nn.Sequential(conv_bn_relu(256 + 48, 256), conv_bn_relu(256, 256),
                                     nn.Conv2d(256, num_classes, 1))
        for m in (self.aspp, self.reduce, self.decoder):
            init_weights(m)

    def decode(self, feats):
        low = self.reduce(feats[self.low])
        y = F.interpolate(self.aspp(feats[-1]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.decoder(torch.cat([y, low], 1))


class PSPNet(BackboneModel):
    """PSPNet (Zhao et al., 2017): dilated backbone (stride 8) + pyramid pooling + auxiliary head."""

    classifier_module = "head.2"

    def __init__(self, num_classes: int, in_channels: int = 3, backbone: str = "resnet50", output_stride: int = 8,
                 aux_head: bool = True, pretrained: bool | str = False):
        super().__init__(num_classes, in_channels, backbone, output_stride, aux_head, pretrained)
        self.ppm = PyramidPooling(self.backbone.feature_info[-1].channels)
        self.head = nn.Sequential(conv_bn_relu(self.ppm.channels, 512), nn.Dropout(0.1), nn.Conv2d(512, num_classes, 1))
        init_weights(self.ppm)
        init_weights(self.head)

    def decode(self, feats):
        return self.head(self.ppm(feats[-1]))


class ResidualConvUnit(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class ChainedResidualPooling(nn.Module):
    def __init__(self, c: int, stages: int = 2):
        super().__init__()
        self.relu = nn.ReLU()
        self.stages = nn.ModuleList([nn.Sequential(nn.MaxPool2d(5, 1, 2), nn.Conv2d(c, c, 3, padding=1, bias=False))
                                     for _ in range(stages)])

    def forward(self, x):
        x = self.relu(x)
        out, path = x, x
        for s in self.stages:
            path = s(path)
            out = out + path
        return out


class RefineBlock(nn.Module):
    """RefineNet block: RCUs per input path, multi-resolution fusion, chained residual pooling, RCU."""

    def __init__(self, in_channels: list[int], c: int):
        super().__init__()
        self.adapt = nn.ModuleList([nn.Sequential(nn.Conv2d(ci, c, 3, padding=1, bias=False), ResidualConvUnit(c),
                                                  ResidualConvUnit(c)) for ci in in_channels])
        self.fuse = nn.ModuleList([nn.Conv2d(c, c, 3, padding=1, bias=False) for _ in in_channels]) \
            if len(in_channels) > 1 else None
        self.crp = ChainedResidualPooling(c)
        self.out = ResidualConvUnit(c)

    def forward(self, *xs):
        paths = [a(x) for a, x in zip(self.adapt, xs)]
        if self.fuse is not None:
            size = max((p.shape[-2:] for p in paths), key=lambda s: s[0] * s[1])
            paths = [F.interpolate(f(p), size=size, mode="bilinear", align_corners=False)
                     for f, p in zip(self.fuse, paths)]
        return self.out(self.crp(sum(paths)))


class RefineNet(BackboneModel):
    """4-cascaded RefineNet (Lin et al., 2017) on the backbone's features at strides 32, 16, 8 and 4."""

    classifier_module = "classifier.3"

    def __init__(self, num_classes: int, in_channels: int = 3, backbone: str = "resnet50", output_stride: int = 32,
                 aux_head: bool = False, features: int = 256, pretrained: bool | str = False):
        super().__init__(num_classes, in_channels, backbone, output_stride, aux_head, pretrained)
        info = self.backbone.feature_info
        self.levels = [_index_at(info, 4, "refinenet")] + [
            max(i for i, f in enumerate(info) if f.stride <= s) for s in (8, 16, 32)]
        ch = [info[i].channels for i in self.levels]
        c4 = 2 * features
        self.refine4 = RefineBlock([ch[3]], c4)
        self.refine3 = RefineBlock([ch[2], c4], features)
        self.refine2 = RefineBlock([ch[1], features], features)
        self.refine1 = RefineBlock([ch[0], features], features)
        self.classifier = nn.Sequential(ResidualConvUnit(features), ResidualConvUnit(features), nn.Dropout(0.5),
                                        nn.Conv2d(features, num_classes, 1))
        for m in (self.refine4, self.refine3, self.refine2, self.refine1, self.classifier):
            init_weights(m)

    def decode(self, feats):
        f1, f2, f3, f4 = (feats[i] for i in self.levels)
        y = self.refine4(f4)
        y = self.refine3(f3, y)
        y = self.refine2(f2, y)
        y = self.refine1(f1, y)
        return self.classifier(y)


class FPN(BackboneModel):
    """Feature-pyramid decoder (Kirillov et al.'s semantic FPN, CVPR 2019, slimmed for CPUs).

    1x1 laterals on the features at strides 4-32 to ``decoder_channels``, a top-down pathway (upsample and
    add), one 3x3 conv-BN-ReLU per level, all levels upsampled to stride 4 and summed, a 3x3 conv-BN-ReLU,
    dropout and the classifier at stride 4.
    """

    classifier_module = "fuse.2"

    def __init__(self, num_classes: int, in_channels: int = 3, backbone: str = "efficientnet_lite0",
                 output_stride: int = 32, aux_head: bool = False, decoder_channels: int = 128,
                 dropout: float = 0.1, pretrained: bool | str = False):
        super().__init__(num_classes, in_channels, backbone, output_stride, aux_head, pretrained)
        info = self.backbone.feature_info
        first = _index_at(info, 4, "fpn")
        self.levels = list(range(first, len(info)))
        c = decoder_channels
        self.lateral = nn.ModuleList([nn.Conv2d(info[i].channels, c, 1) for i in self.levels])
        self.smooth = nn.ModuleList([conv_bn_relu(c, c) for _ in self.levels])
        self.fuse = nn.Sequential(conv_bn_relu(c, c), nn.Dropout2d(dropout), nn.Conv2d(c, num_classes, 1))
        for m in (self.lateral, self.smooth, self.fuse):
            init_weights(m)

    def decode(self, feats):
        laterals = [lat(feats[i]) for lat, i in zip(self.lateral, self.levels)]
        for i in range(len(laterals) - 2, -1, -1):  # top-down: coarse to fine
            laterals[i] = laterals[i] + F.interpolate(laterals[i + 1], size=laterals[i].shape[-2:], mode="bilinear",
                                                      align_corners=False)
        size = laterals[0].shape[-2:]
        y = sum(F.interpolate(s(p), size=size, mode="bilinear", align_corners=False) if k else s(p)
                for k, (s, p) in enumerate(zip(self.smooth, laterals)))
        return self.fuse(y)


class UNetDecoder(BackboneModel):
    """U-Net decoder on any backbone (as smp's ``Unet``): from the deepest feature, upsample x2, concatenate
    the encoder's feature at that stride, two 3x3 conv-BN-ReLU; ``decoder_channels`` per stage, deepest first;
    the classifier sits at the finest stage reached (stride 2 with the default four stages)."""

    classifier_module = "classifier"

    def __init__(self, num_classes: int, in_channels: int = 3, backbone: str = "efficientnet_lite0",
                 output_stride: int = 32, aux_head: bool = False,
                 decoder_channels: tuple[int, ...] | list[int] = (256, 128, 64, 32), pretrained: bool | str = False):
        super().__init__(num_classes, in_channels, backbone, output_stride, aux_head, pretrained)
        info = self.backbone.feature_info
        # the skips: the deepest feature at each finer stride than the bottom, finest last
        strides = sorted({f.stride for f in info[:-1] if f.stride < info[-1].stride}, reverse=True)
        self.skips = [max(i for i, f in enumerate(info) if f.stride == s) for s in strides][:len(decoder_channels)]
        if len(self.skips) < len(decoder_channels):
            raise ConfigError(f"unet: {len(decoder_channels)} decoder stages asked, the backbone has "
                              f"{len(self.skips)} finer strides")
        cin, blocks = info[-1].channels, []
        for c, i in zip(decoder_channels, self.skips):
            blocks.append(nn.Sequential(conv_bn_relu(cin + info[i].channels, c), conv_bn_relu(c, c)))
            cin = c
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Conv2d(cin, num_classes, 1)
        init_weights(self.blocks)
        init_weights(self.classifier)

    def decode(self, feats):
        y = feats[-1]
        for block, i in zip(self.blocks, self.skips):
            skip = feats[i]
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = block(torch.cat([y, skip], 1))
        return self.classifier(y)
