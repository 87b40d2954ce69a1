"""Segmentation models: ``create_model(name, num_classes, **kwargs)`` over the registered builders
(:mod:`.factories`), backbones with one feature contract (:mod:`.backbones`)."""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from ..errors import ConfigError
from . import factories  # noqa: F401 - registers the builders
from .backbones import create_encoder, encoder_normalization, list_encoders
from .base import SegmentationModel
from .registry import MODELS, create_model, list_models, model_arguments, register_model


def load_backbone_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load ImageNet weights (a torchvision state dict) into the model's backbone."""
    if not hasattr(model, "load_backbone"):
        raise ConfigError(f"{type(model).__name__} has no pretrained backbone to load {path} into")
    return model.load_backbone(path)


__all__ = ["create_model", "list_models", "model_arguments", "register_model", "load_backbone_weights",
           "SegmentationModel", "MODELS", "create_encoder", "list_encoders", "encoder_normalization"]
