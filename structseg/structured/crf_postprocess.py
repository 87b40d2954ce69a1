"""Dense CRF as post-processing: parameters from a YAML file or flags, and a refiner for eval/predict."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import yaml

from .._io import atomic_path
from ..config import dataclass_from_dict, read_yaml
from ..errors import ConfigError
from .dense_crf import CRFParams, DenseCRF


def load_crf_params(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> CRFParams:
    """CRF settings from ``path`` (YAML with :class:`CRFParams` keys; None: defaults) and ``key=value``."""
    data = read_yaml(path, "CRF parameter file") if path is not None else {}
    try:
        params = dataclass_from_dict(CRFParams, data, overrides, "crf")
        params.validate()
    except (ConfigError, ValueError) as e:
        raise ConfigError(f"{path or 'CRF parameters'}: {e}") from None
    return params


def save_crf_params(params: CRFParams, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(dataclasses.asdict(params), sort_keys=False))


def image_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """``uint8 (H, W, 3)`` -> ``float (1, 3, H, W)`` in 0-255 on ``device``, as the CRF takes it."""
    return torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1)[None].float()


def check_crf_for(params: CRFParams, num_classes: int, channels: int = 3) -> None:
    """The CRF settings fit a model of ``num_classes`` classes taking ``channels``-band images (checked before
    any network runs): the appearance kernel reads RGB colour, so other band counts are refused."""
    if channels != 3:
        raise ConfigError(f"the dense CRF's appearance kernel reads RGB colour; this model takes {channels}-band "
                          "images, so it cannot be refined with --crf")
    try:
        params.validate(num_classes)
    except ValueError as e:
        raise ConfigError(f"CRF parameters: {e}") from None


def crf_refiner(params: CRFParams):
    """A ``refine(logits (1,C,H,W), image uint8 (H,W,3)) -> probabilities`` for evaluation/prediction."""
    crf = DenseCRF(params)

    def refine(logits: torch.Tensor, image: np.ndarray) -> torch.Tensor:
        return crf(image_tensor(image, logits.device), logits=logits.float())

    return refine
