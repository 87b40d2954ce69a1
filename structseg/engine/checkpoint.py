"""Checkpoints: everything needed to rebuild and use a model, written atomically.

A checkpoint is a dict of plain values and tensors (loadable with ``weights_only=True``):
``model`` (name, args, num_classes), ``classes`` (names, ignore_index, palette),
``normalization`` (mean, std), ``state_dict`` and, for resuming, ``train_state``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..data.io import atomic_path, load_torch_file
from ..data.layout import ClassInfo
from ..errors import CheckpointError, ConfigError
from ..models import create_model

FORMAT = "structseg-checkpoint-v1"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` via a temporary file, so a crash never leaves a partial file."""
    payload = {"format": FORMAT, **payload}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"


def pretrained_models() -> dict[str, Path]:
    """Checkpoints shipped with the package, by name (``camvid-unet`` -> ``pretrained/camvid_unet.pt``)."""
    return {p.stem.replace("_", "-"): p for p in sorted(PRETRAINED_DIR.glob("*.pt"))}


def resolve_checkpoint(path: str | Path) -> Path:
    """A file path, or the name of a shipped checkpoint (see ``structseg models --pretrained``)."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = pretrained_models()
    if str(path) in shipped:
        return shipped[str(path)]
    if not p.suffix and not p.parent.name:
        raise CheckpointError(f"{path}: no such checkpoint file or shipped model "
                              f"(shipped: {', '.join(shipped) or 'none'})")
    return p  # load_torch_file reports the missing file


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``) and check its format; ``path`` may name a shipped model."""
    path = resolve_checkpoint(path)
    ckpt = load_torch_file(path, "checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a structseg checkpoint (expected format {FORMAT})")
    return ckpt


def build_model(spec: dict, mean: tuple[float, ...], std: tuple[float, ...],
                pretrained: bool | str = False) -> torch.nn.Module:
    """The network a model spec describes: ``create_model(name, num_classes, **args)``, wrapped in
    :class:`CRFasRNN` when ``spec["crf"]`` holds CRF settings (``mean``/``std`` undo the input
    normalisation for the CRF's colour features). ImageNet weights are loaded only with ``pretrained``
    (a new training run), never when a checkpoint's own weights follow."""
    args = {k: v for k, v in spec["args"].items() if k != "pretrained"}
    if pretrained:
        args["pretrained"] = pretrained
    model = create_model(spec["name"], spec["num_classes"], **args)
    if spec.get("crf") is not None:
        from ..structured.crfasrnn import CRFasRNN
        from ..structured.crf_postprocess import load_crf_params
        params = load_crf_params(None, [f"{k}={v}" for k, v in spec["crf"].items()])
        model = CRFasRNN(model, spec["num_classes"], params, mean, std)
    return model


def model_from_checkpoint(ckpt: dict, path: str | Path = "checkpoint",
                          num_classes: int | None = None) -> torch.nn.Module:
    """Rebuild the model a checkpoint describes and load its weights.

    ``num_classes``, when given, must equal the checkpoint's (e.g. the dataset's class count).
    """
    spec = ckpt.get("model")
    if not (isinstance(spec, dict) and isinstance(spec.get("name"), str) and isinstance(spec.get("args"), dict)
            and isinstance(spec.get("num_classes"), int) and isinstance(ckpt.get("state_dict"), dict)):
        raise CheckpointError(f"{path}: damaged checkpoint: 'model' must hold name, args and num_classes, "
                              "and 'state_dict' the weights")
    if num_classes is not None and num_classes != spec["num_classes"]:
        raise CheckpointError(
            f"{path}: model has {spec['num_classes']} classes but the dataset has {num_classes}")
    mean, std = checkpoint_normalization(ckpt, path)
    try:
        model = build_model(spec, mean, std)
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None
    state = {k.removeprefix("module."): v.float() if v.is_floating_point() else v
             for k, v in ckpt["state_dict"].items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match model {spec['name']!r} {spec['args']} "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for k, v in own.items():
        if v.shape != state[k].shape:
            raise CheckpointError(f"{path}: {k} has shape {tuple(state[k].shape)}, model expects {tuple(v.shape)}")
    model.load_state_dict(state)
    return model


def export_checkpoint(src: str | Path, dst: str | Path, half: bool = True) -> dict[str, Any]:
    """A deployable copy: model, classes, normalisation, config, metrics and weights (fp16 when ``half``),
    without the optimiser state. Returns the written payload."""
    ckpt = load_checkpoint(src)
    model_from_checkpoint(ckpt, src)  # refuse to export weights that do not load
    state = {k: (v.half() if half and v.is_floating_point() else v).clone() for k, v in ckpt["state_dict"].items()}
    payload = {k: v for k, v in ckpt.items() if k not in ("format", "state_dict", "train_state")}
    payload["state_dict"] = state
    save_checkpoint(dst, payload)
    return payload


def checkpoint_normalization(ckpt: dict, path: str | Path = "checkpoint") -> tuple[tuple[float, ...],
                                                                                  tuple[float, ...]]:
    """The (mean, std) a checkpoint's images are normalised with; a checkpoint without them gets its
    backbone's (torchvision's ImageNet statistics for models without one)."""
    from ..models import encoder_normalization
    norm = ckpt.get("normalization")
    if norm is None:
        backbone = (ckpt.get("model", {}).get("args") or {}).get("backbone")
        return encoder_normalization(backbone if isinstance(backbone, str) else "")
    try:
        mean, std = tuple(float(v) for v in norm["mean"]), tuple(float(v) for v in norm["std"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path}: 'normalization' must hold 'mean' and 'std', 3 numbers each") from None
    if len(mean) != 3 or len(std) != 3 or not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise CheckpointError(f"{path}: 'normalization' must hold 3 finite means and 3 positive stds, "
                              f"got {norm}")
    return mean, std


def checkpoint_classes(ckpt: dict) -> ClassInfo:
    if not isinstance(ckpt.get("classes"), dict):
        raise CheckpointError("damaged checkpoint: no 'classes' mapping (names, ignore_index)")
    return ClassInfo.from_dict(ckpt["classes"], "checkpoint classes")
