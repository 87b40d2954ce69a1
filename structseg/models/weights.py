"""Loading ImageNet weights from a user's torchvision state-dict file into our backbones."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch.nn as nn

from ..data.io import load_torch_file
from ..errors import CheckpointError


def load_torchvision_weights(module: nn.Module, path: str | Path, what: str,
                             key_map: Callable[[str], str] | None = None, reshape: bool = False) -> list[str]:
    """Load every parameter and buffer of ``module`` from the state dict in ``path``.

    ``key_map`` turns the module's key into the file's (default: the same); with ``reshape``, a tensor
    of the same number of elements is reshaped (e.g. fc6 ``Linear`` -> 7x7 conv). Returns the file's keys
    that were not used. Any missing key or shape mismatch is one :class:`CheckpointError` naming the file.
    """
    state = load_torch_file(path, "backbone weights file")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict (parameter name -> tensor)")
    own = module.state_dict()
    source = {k: key_map(k) if key_map else k for k in own}
    missing = [source[k] for k in own if source[k] not in state]
    if missing:
        raise CheckpointError(f"{path}: not a torchvision {what} state dict; missing {missing[:4]}"
                              f"{' ...' if len(missing) > 4 else ''}")
    new = {}
    for k, v in own.items():
        w = state[source[k]]
        if w.shape != v.shape and not (reshape and w.numel() == v.numel()):
            raise CheckpointError(f"{path}: {source[k]} has shape {tuple(w.shape)}; expected {tuple(v.shape)} "
                                  "(the first convolution must match in_channels)")
        new[k] = w.reshape(v.shape).to(v.dtype)
    module.load_state_dict(new)
    return sorted(set(state) - set(source.values()))
