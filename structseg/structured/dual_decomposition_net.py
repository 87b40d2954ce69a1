"""A segmentation network with the dual-decomposition CRF (seed 002) on its logits, trained end to end.

The CRF works on the grid of the network's own classifier (stride 16 for DeepLabV3 at output stride 16,
as in the seed; stride 4 for FPN and DeepLabV3+), or on a coarser ``grid_stride`` (logits and features
average-pooled to it): the classifier's output is the unary, its input the features that the pairwise
head reads. The refined logits are then upsampled to the input as the network's own would be.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.base import SegmentationModel
from .dual_decomposition import DDParams, DualDecompositionCRF


class DualDecompositionNet(SegmentationModel):
    """``DualDecompositionNet(net, num_classes, params, grid_stride)``; ``forward(x)`` as any model's."""

    def __init__(self, net: SegmentationModel, num_classes: int, params: DDParams | None = None,
                 grid_stride: int | None = None):
        super().__init__()
        name = getattr(net, "classifier_module", None)
        if name is None:
            raise ConfigError(f"model.crf kind dual_decomposition: {type(net).__name__} does not declare its final "
                              "classifier (classifier_module), so there is no logits grid to put the CRF on")
        classifier = net.get_submodule(name)
        if not isinstance(classifier, nn.Conv2d) or classifier.out_channels != num_classes:
            raise ConfigError(f"{type(net).__name__}.{name}: expected the 1x1 classifier with {num_classes} outputs")
        if grid_stride is not None and grid_stride not in (4, 8, 16, 32):
            raise ConfigError(f"model.crf.grid_stride: {grid_stride!r}; expected null, 4, 8, 16 or 32")
        self.net, self.classifier_name, self.grid_stride = net, name, grid_stride
        self.stride = max(net.stride, grid_stride or 1)
        try:
            self.crf = DualDecompositionCRF(num_classes, classifier.in_channels, params)
        except ValueError as e:
            raise ConfigError(f"model.crf: {e}") from None

    @property
    def feature_info(self) -> list:
        return [dataclasses.replace(f, module=f"net.{f.module}") for f in self.net.feature_info]

    def load_backbone(self, path):
        return self.net.load_backbone(path)

    def forward_padded_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        seen: dict[str, torch.Tensor] = {}

        def keep(_module, inputs, output):
            seen["features"], seen["logits"] = inputs[0], output

        hook = self.net.get_submodule(self.classifier_name).register_forward_hook(keep)
        try:
            logits, aux = self.net.forward_padded_aux(x)
        finally:
            hook.remove()
        if seen.get("logits") is None or seen["logits"].shape != logits.shape:
            raise RuntimeError(f"{type(self.net).__name__}: its classifier's output is not the logits it returns")
        unary, features = seen["logits"], seen["features"]
        if self.grid_stride is not None:
            size = (x.shape[-2] // self.grid_stride, x.shape[-1] // self.grid_stride)
            if unary.shape[-2:] != size:
                unary, features = F.adaptive_avg_pool2d(unary, size), F.adaptive_avg_pool2d(features, size)
        with torch.autocast(x.device.type, enabled=False):  # the chains' log-sum-exps in float32
            out = self.crf(unary.float(), features.float())
        return out, aux

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_padded_aux(x)[0]
