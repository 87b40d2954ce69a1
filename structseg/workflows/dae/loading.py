"""DAE checkpoints (the engine's, of kind ``dae``) and the frozen segmenter each one stands on."""
from __future__ import annotations

from pathlib import Path

import torch

from ...config import dataclass_from_dict
from ...engine.checkpoint import (
    export_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    resolve_checkpoint,
    shipped_checkpoints,
)
from ...errors import CheckpointError
from ...structured.dae import ConditionalDAE
from ...structured.features import SegmenterWithFeatures
from .config import DAERunConfig


def shipped_daes() -> dict[str, Path]:
    """DAE checkpoints shipped with the package, by name (``camvid-unet-dae``)."""
    return shipped_checkpoints("dae")


def read_dae_checkpoint(path: str | Path) -> dict:
    """A DAE checkpoint file, or the name of a shipped one, read safely and checked."""
    return load_checkpoint(path, "dae")


def load_segmenter(path: str | Path, names: list[str], layers: dict[str, str], temperature: float,
                   device: torch.device) -> tuple[dict, SegmenterWithFeatures]:
    """The segmentation checkpoint and its network, frozen, returning probabilities and the features ``names``."""
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path).to(device)
    return ckpt, SegmenterWithFeatures(model, names, layers, temperature)


def segmenter_ref(segmenter: str | Path) -> str:
    """How a DAE checkpoint names its segmenter: a shipped model by name (valid on any install, also when given
    as the path of a shipped file, e.g. recorded by another install), else an absolute path."""
    shipped = shipped_checkpoints()
    by_file = {p.name: name for name, p in shipped.items()}
    path = Path(str(segmenter))
    if str(segmenter) in shipped:
        return str(segmenter)
    if path.parent.name == "pretrained" and path.name in by_file:
        return by_file[path.name]
    return str(resolve_checkpoint(segmenter).resolve())


def export_dae(src: str | Path, dst: str | Path, half: bool = True, chosen: tuple[float, int] | None = None) -> dict:
    """A deployable DAE: weights (fp16 when ``half``), config, segmenter reference and, when given, the chosen
    (step, iterations), which ``dae test`` and ``dae compare`` then use by default; no optimiser state."""
    changes = {"segmenter": segmenter_ref(read_dae_checkpoint(src)["segmenter"])}
    if chosen is not None:
        changes["chosen"] = {"step": float(chosen[0]), "iterations": int(chosen[1])}
    return export_checkpoint(src, dst, half, changes)


def load_dae(path: str | Path, segmenter: str | Path | None, device: torch.device):
    """A trained DAE checkpoint, its segmenter (the one it was trained on unless ``segmenter`` is given)."""
    ck = read_dae_checkpoint(path)
    cfg = dataclass_from_dict(DAERunConfig, ck["config"])
    seg_ckpt, seg = load_segmenter(segmenter or ck["segmenter"], cfg.dae_dict.concat_h, ck["taps"],
                                   cfg.dae_dict.temperature, device)
    if seg.channels != ck["h_channels"]:
        raise CheckpointError(f"{path}: trained on segmenter features {ck['h_channels']}, got {seg.channels}")
    dae = ConditionalDAE(ck["num_classes"], seg.channels, cfg.dae_dict).to(device)
    dae.load_state_dict(ck["state_dict"])
    return cfg, seg_ckpt, seg, dae.eval()
