"""Loading ImageNet weights from a state-dict file into a backbone, strictly, with one clear error."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .._io import load_torch_file
from ..errors import CheckpointError


def _listed(keys: list[str]) -> str:
    return f"{keys[:4]}{' ...' if len(keys) > 4 else ''}"


def adapt_input_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """An RGB first convolution ``(out, 3, k, k)`` for ``channels`` inputs, as segmentation_models.pytorch does:
    one channel gets the sum over RGB (a grey image then gives the response to its RGB copy); more channels
    repeat R, G, B cyclically, scaled by ``3 / channels`` so the response to a constant input keeps its size."""
    if channels == 1:
        return weight.sum(1, keepdim=True)
    idx = torch.arange(channels) % 3
    return weight[:, idx] * (3.0 / channels)


def load_state_dict_file(module: nn.Module, path: str | Path, what: str, reshape: bool = False,
                         allowed_unused: Callable[[str], bool] | None = None) -> list[str]:
    """Load every parameter and buffer of ``module`` from the state dict in ``path``; returns the unused keys.

    Every key of the module must be in the file with its shape (with ``reshape``, a tensor of the same
    number of elements is reshaped, e.g. fc6 ``Linear`` -> 7x7 conv). A file key the module lacks is an
    error unless ``allowed_unused(key)`` (e.g. the ImageNet classifier). Errors name the file and the first
    missing and unexpected keys, so weights of another architecture never load half-way.
    """
    state = load_torch_file(path, "weights file")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict (parameter name -> tensor)")
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own and not (allowed_unused and allowed_unused(k))]
    if missing or unexpected:
        raise CheckpointError(f"{path}: not {what} weights; missing keys {_listed(missing)}, "
                              f"unexpected keys {_listed(unexpected)}")
    new = {}
    for k, v in own.items():
        w = state[k]
        if w.dim() == 4 and v.dim() == 4 and w.shape[1] == 3 and v.shape[1] != 3 and (
                w.shape[0], *w.shape[2:]) == (v.shape[0], *v.shape[2:]):
            w = adapt_input_channels(w, v.shape[1])
        if w.shape != v.shape and not (reshape and w.numel() == v.numel()):
            raise CheckpointError(f"{path}: {k} has shape {tuple(w.shape)}; expected {tuple(v.shape)} "
                                  "(the first convolution must match in_channels)")
        new[k] = w.reshape(v.shape).to(v.dtype)
    module.load_state_dict(new)
    return sorted(set(state) - set(own))
