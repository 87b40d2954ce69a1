"""The one contract every backbone follows, as timm's ``features_only`` and smp's encoders do.

An :class:`Encoder` maps an image ``(N, C, H, W)`` to a list of feature maps ordered by stride
(finest first); ``feature_info`` describes each one: its stride (relative to the input, dilation
included), its channels and the name of the module that produces it (so hooks and feature taps can
find it). ``output_stride`` 8 or 16 trades the last strides for dilation, so ImageNet weights still load.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class FeatureInfo:
    """One feature map of an encoder: stride w.r.t. the input, channels, producing module's name."""

    stride: int
    channels: int
    module: str


class Encoder(nn.Module):
    """Base class: ``forward(x) -> [features at feature_info[0].stride, ...]`` (strides ascending)."""

    feature_info: list[FeatureInfo]
    output_stride: int = 32

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def channels(self) -> list[int]:
        return [f.channels for f in self.feature_info]

    @property
    def strides(self) -> list[int]:
        return [f.stride for f in self.feature_info]


def dilation_plan(strides: list[int], output_stride: int) -> list[tuple[int, int]]:
    """(stride, dilation) for stages with nominal ``strides`` so that the total stride stops at ``output_stride``.

    A stage whose stride would take the total past ``output_stride`` keeps stride 1 and multiplies the
    dilation instead (torchvision's ``replace_stride_with_dilation``); returns each stage's pair, where
    the dilation is the one its later blocks use (its first block keeps the one before).
    """
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    total, dilation, plan = 1, 1, []
    for s in strides:
        if s > 1 and total * s > output_stride:
            dilation *= s
            plan.append((1, dilation))
        else:
            total *= s
            plan.append((s, dilation))
    return plan
