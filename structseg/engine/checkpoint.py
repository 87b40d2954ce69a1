"""Checkpoints: everything needed to rebuild and use a trained network, written atomically.

A checkpoint is a dict of plain values and tensors (loadable with ``weights_only=True``) with a
``format`` and a ``kind``: ``segmenter`` (a segmentation network: ``model`` (name, args,
num_classes), ``classes`` (names, ignore_index, palette), ``normalization`` (mean, std)) or ``dae``
(a conditional DAE on top of one; see :mod:`structseg.workflows.dae`). Both hold ``state_dict``
and, for resuming, ``optimizer`` / ``train_state``. Shipped checkpoints are found by name.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from .._io import atomic_path, load_torch_file
from ..data.layout import ClassInfo
from ..errors import CheckpointError, ConfigError
from ..models import create_model

FORMAT = "structseg-checkpoint-v1"
Kind = Literal["segmenter", "dae"]
_LEGACY_FORMATS = {"structseg-dae-v1": "dae"}  # written before checkpoints had a kind field
_WHAT = {"segmenter": "segmentation model", "dae": "DAE"}
PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"
_SHIPPED_DIRS = {"segmenter": PRETRAINED_DIR, "dae": PRETRAINED_DIR / "dae"}
_TRAINING_ONLY = ("format", "state_dict", "optimizer", "train_state")


def save_checkpoint(path: str | Path, payload: dict[str, Any], kind: Kind = "segmenter") -> None:
    """Write ``payload`` to ``path`` via a temporary file, so a crash never leaves a partial file."""
    payload = {**payload, "format": FORMAT, "kind": kind}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def checkpoint_kind(ckpt: Any) -> str | None:
    """``segmenter`` or ``dae`` for a structseg checkpoint (any version), None for anything else."""
    if not isinstance(ckpt, dict):
        return None
    if ckpt.get("format") == FORMAT:
        return ckpt.get("kind", "segmenter")
    return _LEGACY_FORMATS.get(ckpt.get("format"))


def shipped_checkpoints(kind: Kind = "segmenter") -> dict[str, Path]:
    """Checkpoints of ``kind`` shipped with the package, by name (``camvid-unet`` -> ``pretrained/camvid_unet.pt``,
    ``camvid-unet-dae`` -> ``pretrained/dae/camvid_unet_dae.pt``)."""
    return {p.stem.replace("_", "-"): p for p in sorted(_SHIPPED_DIRS[kind].glob("*.pt"))}


def resolve_checkpoint(path: str | Path, kind: Kind = "segmenter") -> Path:
    """A file path, or the name of a shipped checkpoint of ``kind`` (see ``structseg models --pretrained``)."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = shipped_checkpoints(kind)
    if str(path) in shipped:
        return shipped[str(path)]
    listing = f"shipped {_WHAT[kind]}s: {', '.join(shipped) or 'none'}"
    for other in get_args(Kind):
        if other != kind and str(path) in shipped_checkpoints(other):
            raise CheckpointError(f"{path}: that is a shipped {_WHAT[other]}, not a {_WHAT[kind]}; {listing} "
                                  f"(or give a {_WHAT[kind]} checkpoint file)")
    if not p.suffix and not p.parent.name:
        raise CheckpointError(f"{path}: no such checkpoint file or shipped model ({listing})")
    return p  # load_torch_file reports the missing file


def load_checkpoint(path: str | Path, kind: Kind = "segmenter") -> dict[str, Any]:
    """Read a checkpoint of ``kind`` safely (``weights_only=True``); ``path`` may name a shipped one."""
    path = resolve_checkpoint(path, kind)
    ckpt = load_torch_file(path, "checkpoint" if kind == "segmenter" else f"{_WHAT[kind]} checkpoint")
    found = checkpoint_kind(ckpt)
    if found is None:
        raise CheckpointError(f"{path}: not a structseg checkpoint (expected format {FORMAT})")
    if found != kind:
        raise CheckpointError(f"{path}: a {_WHAT.get(found, found)} checkpoint, where a {_WHAT[kind]} "
                              "checkpoint is expected")
    return ckpt


def read_checkpoint(path: str | Path) -> tuple[str, dict[str, Any]]:
    """``(kind, content)`` of a checkpoint of any kind: a file, or the name of a shipped one."""
    if not Path(path).is_file():
        for kind in get_args(Kind):
            if str(path) in shipped_checkpoints(kind):
                return kind, load_checkpoint(path, kind)
    ckpt = load_torch_file(resolve_checkpoint(path), "checkpoint")  # an unknown name or file: one clear error
    kind = checkpoint_kind(ckpt)
    if kind is None:
        raise CheckpointError(f"{path}: not a structseg checkpoint (expected format {FORMAT})")
    return kind, ckpt


def export_checkpoint(src: str | Path, dst: str | Path, half: bool = True,
                      changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """A deployable copy of a checkpoint of any kind: everything but the optimiser and training state, the
    weights in fp16 when ``half``, with ``changes`` applied. Segmentation weights that do not load into
    their model are refused. Returns the written payload."""
    kind, ckpt = read_checkpoint(src)
    if kind == "segmenter":
        model_from_checkpoint(ckpt, src)  # refuse to export weights that do not load
    payload = {k: v for k, v in ckpt.items() if k not in _TRAINING_ONLY}
    payload.update(changes or {})
    payload["state_dict"] = {k: (v.half() if half and v.is_floating_point() else v).clone()
                             for k, v in ckpt["state_dict"].items()}
    save_checkpoint(dst, payload, kind)
    return payload


def build_model(spec: dict, mean: tuple[float, ...], std: tuple[float, ...],
                pretrained: bool | str = False) -> torch.nn.Module:
    """The network a model spec describes: ``create_model(name, num_classes, **args)``, with an end-to-end
    CRF on top when ``spec["crf"]`` holds one: ``kind: mean_field`` (the default; :class:`CRFasRNN`, whose
    colour features need ``mean``/``std`` to undo the input normalisation) or ``kind: dual_decomposition``
    (seed 002, :class:`DualDecompositionNet`). ImageNet weights are loaded only with ``pretrained`` (a new
    training run), never when a checkpoint's own weights follow."""
    args = {k: v for k, v in spec["args"].items() if k != "pretrained"}
    if pretrained:
        args["pretrained"] = pretrained
    model = create_model(spec["name"], spec["num_classes"], **args)
    crf = spec.get("crf")
    if crf is None:
        return model
    settings = {k: v for k, v in crf.items() if k != "kind"}
    kind = crf.get("kind", "mean_field")
    if kind == "mean_field":
        from ..structured.crf_postprocess import load_crf_params
        from ..structured.crfasrnn import CRFasRNN
        return CRFasRNN(model, spec["num_classes"], load_crf_params(None, [f"{k}={v}" for k, v in settings.items()]),
                        mean, std)
    if kind == "dual_decomposition":
        from ..config import dataclass_from_dict
        from ..structured.dual_decomposition import DDParams
        from ..structured.dual_decomposition_net import DualDecompositionNet
        grid_stride = settings.pop("grid_stride", None)
        params = dataclass_from_dict(DDParams, settings, section="model.crf")
        return DualDecompositionNet(model, spec["num_classes"], params, grid_stride)
    raise ConfigError(f"model.crf.kind: {kind!r}; expected mean_field (CRF-as-RNN) or dual_decomposition")


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


def checkpoint_channels(ckpt: dict) -> int:
    """The number of input channels (image bands) a checkpoint's network takes: ``in_channels``, 3 by default."""
    args = (ckpt.get("model") or {}).get("args") or {}
    c = args.get("in_channels", 3)
    if not isinstance(c, int) or isinstance(c, bool) or c < 1:
        raise CheckpointError(f"damaged checkpoint: model.args.in_channels is {c!r}; expected an integer >= 1")
    return c


def checkpoint_normalization(ckpt: dict, path: str | Path = "checkpoint") -> tuple[tuple[float, ...],
                                                                                  tuple[float, ...]]:
    """The (mean, std) a checkpoint's images are normalised with, one value per input channel; a checkpoint
    without them gets its backbone's (torchvision's ImageNet statistics for models without one)."""
    from ..models import encoder_normalization
    c = checkpoint_channels(ckpt)
    norm = ckpt.get("normalization")
    if norm is None:
        backbone = (ckpt.get("model", {}).get("args") or {}).get("backbone")
        mean, std = encoder_normalization(backbone if isinstance(backbone, str) else "")
        return tuple(mean[i % 3] for i in range(c)), tuple(std[i % 3] for i in range(c))
    try:
        mean, std = tuple(float(v) for v in norm["mean"]), tuple(float(v) for v in norm["std"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path}: 'normalization' must hold 'mean' and 'std', {c} numbers each") from None
    if len(mean) != c or len(std) != c or not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise CheckpointError(f"{path}: 'normalization' must hold {c} finite means and {c} positive stds "
                              f"(one per input channel), got {norm}")
    return mean, std


def checkpoint_classes(ckpt: dict) -> ClassInfo:
    if not isinstance(ckpt.get("classes"), dict):
        raise CheckpointError("damaged checkpoint: no 'classes' mapping (names, ignore_index)")
    return ClassInfo.from_dict(ckpt["classes"], "checkpoint classes")


def load_pretrained(name_or_path: str | Path, device: torch.device | str | None = None) -> torch.nn.Module:
    """A trained segmentation network ready for inference: a shipped model by name (``structseg models
    --pretrained``) or a checkpoint file. The module is in eval mode and carries what using it needs:
    ``classes`` (:class:`ClassInfo`: names, palette, ignore_index), ``normalization`` (mean, std of
    ``(x / 255 - mean) / std``, per input channel), ``in_channels`` (the image bands it takes) and ``metrics`` (as recorded when it was exported, or {}).
    An ``.onnx`` file from ``structseg export`` is run by ONNX Runtime behind the same interface."""
    if str(name_or_path).endswith(".onnx"):
        from .onnx_model import OnnxModel
        return OnnxModel(name_or_path)
    ckpt = load_checkpoint(name_or_path)
    model = model_from_checkpoint(ckpt, name_or_path)
    model.classes = checkpoint_classes(ckpt)
    model.normalization = checkpoint_normalization(ckpt, name_or_path)
    model.in_channels = checkpoint_channels(ckpt)
    model.metrics = dict(ckpt.get("metrics") or {})
    return model.to(device or "cpu").eval()
