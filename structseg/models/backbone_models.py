"""Models on an ImageNet-style backbone: DeepLabV3, DeepLabV3+, PSPNet, RefineNet.

All take ``backbone`` (``resnet18/34/50/101`` or ``mobilenet_v2``), ``output_stride`` and
``aux_head``; in training mode a model with an auxiliary head returns ``(logits, aux_logits)``
(the trainer weights the auxiliary loss by 0.4), in eval mode the logits alone.
Backbone parameter names match torchvision's, so ``load_backbone(path)`` takes its ImageNet files.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from .base import SegmentationModel, conv_bn_relu, init_weights
from .heads import ASPP, FCNHead, PyramidPooling
from .mobilenet import MobileNetV2Backbone
from .resnet import RESNETS, ResNetBackbone
from .weights import load_torchvision_weights

BACKBONES = tuple(RESNETS) + ("mobilenet_v2",)


def make_backbone(name: str, in_channels: int, output_stride: int) -> tuple[nn.Module, dict[str, int]]:
    """A backbone and the channels of its ``low`` (stride 4), ``aux`` (stride 16/OS) and ``out`` features."""
    if name in RESNETS:
        b = ResNetBackbone(name, in_channels, output_stride)
        return b, {"low": b.channels[0], "aux": b.channels[2], "out": b.channels[3]}
    if name == "mobilenet_v2":
        b = MobileNetV2Backbone(in_channels, output_stride)
        return b, {"low": b.channels["low"], "aux": b.channels["s16"], "out": b.channels["out"]}
    raise ConfigError(f"unknown backbone {name!r}; available: {', '.join(BACKBONES)}")


def _features(backbone: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    f = backbone(x)
    if "layer4" in f:
        return {"low": f["layer1"], "aux": f["layer3"], "out": f["layer4"], "s8": f["layer2"]}
    return {"low": f["low"], "aux": f["s16"], "out": f["out"], "s8": f["s8"]}


class BackboneModel(SegmentationModel):
    """Shared plumbing: backbone, optional auxiliary head, ImageNet weight loading."""

    def __init__(self, num_classes: int, in_channels: int, backbone: str, output_stride: int, aux_head: bool):
        super().__init__()
        self.backbone, self.channels = make_backbone(backbone, in_channels, output_stride)
        self.backbone_name = backbone
        self.stride = 32
        self.aux = FCNHead(self.channels["aux"], num_classes) if aux_head else None

    def load_backbone(self, path) -> list[str]:
        """Load a torchvision ImageNet state dict (e.g. ``resnet50-0676ba61.pth``) into the backbone."""
        return load_torchvision_weights(self.backbone, path, self.backbone_name)

    def _with_aux(self, logits: torch.Tensor, feats: dict[str, torch.Tensor]):
        if self.aux is not None and self.training:
            return logits, self.aux(feats["aux"])
        return logits

    def forward(self, x: torch.Tensor):
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.stride, (-w) % self.stride
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
        out = self.forward_padded(x)
        up = lambda t: F.interpolate(t, size=x.shape[-2:], mode="bilinear", align_corners=False)[..., :h, :w]  # noqa: E731
        return tuple(up(t) for t in out) if isinstance(out, tuple) else up(out)


class DeepLabV3(BackboneModel):
    """DeepLabV3 (Chen et al., 2017): dilated backbone + ASPP + 3x3 conv + classifier."""

    def __init__(self, num_classes: int, in_channels: int = 3, backbone: str = "resnet50", output_stride: int = 8,
                 aux_head: bool = False):
        super().__init__(num_classes, in_channels, backbone, output_stride, aux_head)
        rates = (12, 24, 36) if output_stride == 8 else (6, 12, 18)
        self.head = nn.Sequential(ASPP(self.channels["out"], rates), conv_bn_relu(256, 256),
                                  nn.Conv2d(256, num_classes, 1))
        init_weights(self.head)

    def forward_padded(self, x):
        f = _features(self.backbone, x)
        return self._with_aux(self.head(f["out"]), f)


class DeepLabV3Plus(BackboneModel):
    """DeepLabV3+ (Chen et al., 2018): ASPP at stride 16 + a decoder with stride-4 low-level features."""

    def __init__(self, num_classes: int, in_channels: int = 3, backbone: str = "resnet50", output_stride: int = 16,
                 aux_head: bool = False):
        super().__init__(num_classes, in_channels, backbone, output_stride, aux_head)
        rates = (12, 24, 36) if output_stride == 8 else (6, 12, 18)
        self.aspp = ASPP(self.channels["out"], rates, dropout=0.1)
        self.reduce = conv_bn_relu(self.channels["low"], 48, 1)
        self.decoder = nn.Sequential(conv_bn_relu(256 + 48, 256), conv_bn_relu(256, 256),
                                     nn.Conv2d(256, num_classes, 1))
        init_weights(self.aspp)
        init_weights(self.reduce)
        init_weights(self.decoder)

    def forward_padded(self, x):
        f = _features(self.backbone, x)
        low = self.reduce(f["low"])
        y = F.interpolate(self.aspp(f["out"]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self._with_aux(self.decoder(torch.cat([y, low], 1)), f)


class PSPNet(BackboneModel):
    """PSPNet (Zhao et al., 2017): dilated backbone (stride 8) + pyramid pooling + auxiliary head."""

    def __init__(self, num_classes: int, in_channels: int = 3, backbone: str = "resnet50", output_stride: int = 8,
                 aux_head: bool = True):
        super().__init__(num_classes, in_channels, backbone, output_stride, aux_head)
        self.ppm = PyramidPooling(self.channels["out"])
        self.head = nn.Sequential(conv_bn_relu(self.ppm.channels, 512), nn.Dropout(0.1), nn.Conv2d(512, num_classes, 1))
        init_weights(self.ppm)
        init_weights(self.head)

    def forward_padded(self, x):
        f = _features(self.backbone, x)
        return self._with_aux(self.head(self.ppm(f["out"])), f)


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
    """4-cascaded RefineNet (Lin et al., 2017) on the four backbone stages (stride 32 to 4)."""

    def __init__(self, num_classes: int, in_channels: int = 3, backbone: str = "resnet50", output_stride: int = 32,
                 aux_head: bool = False, features: int = 256):
        super().__init__(num_classes, in_channels, backbone, output_stride, aux_head)
        if not backbone.startswith("resnet"):
            raise ConfigError("refinenet needs a ResNet backbone (its four stages)")
        ch = self.backbone.channels
        c4 = 2 * features
        self.refine4 = RefineBlock([ch[3]], c4)
        self.refine3 = RefineBlock([ch[2], c4], features)
        self.refine2 = RefineBlock([ch[1], features], features)
        self.refine1 = RefineBlock([ch[0], features], features)
        self.classifier = nn.Sequential(ResidualConvUnit(features), ResidualConvUnit(features), nn.Dropout(0.5),
                                        nn.Conv2d(features, num_classes, 1))
        for m in (self.refine4, self.refine3, self.refine2, self.refine1, self.classifier):
            init_weights(m)

    def forward_padded(self, x):
        f = self.backbone(x)
        y = self.refine4(f["layer4"])
        y = self.refine3(f["layer3"], y)
        y = self.refine2(f["layer2"], y)
        y = self.refine1(f["layer1"], y)
        return self._with_aux(self.classifier(y), {"aux": f["layer3"]})
