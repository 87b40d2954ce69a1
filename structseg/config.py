"""Training configuration: YAML files read into typed dataclasses, with dotted overrides.

Every key must be known (an unknown one is an error naming it), every value is checked against
its field's type, and ``--set section.key=value`` overrides use YAML syntax for the value.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Union

import yaml

from .errors import ConfigError

TTA_SCALES = (0.75, 1.0, 1.25)  # what test-time augmentation (--tta) means: these scales and the horizontal flip
AmpMode = Literal["auto", "bf16", "fp16", "off"]  # autocast: auto (bf16 where supported), bf16, fp16, off (fp32)
# input normalisations (x / 255 - mean) / std that ImageNet weights expect; data.mean/std null picks the backbone's
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision's statistics
TF_LITE_MEAN, TF_LITE_STD = (0.498, 0.498, 0.498), (0.502, 0.502, 0.502)  # TF EfficientNet-Lite's scaling


@dataclass
class ModelConfig:
    """Which network to build (see ``structseg models``) and its keyword arguments."""

    name: str = "unet"
    args: dict[str, Any] = field(default_factory=dict)
    backbone_weights: str | None = None  # a weights file for the backbone (e.g. torchvision's .pth)
    pretrained: bool = False  # the backbone's ImageNet weights from an installed package
    crf: dict[str, Any] | None = None  # an end-to-end CRF on top: kind mean_field (CRF-as-RNN) or dual_decomposition
    init_from: str | None = None  # a checkpoint or shipped name of the same network: a new run starts from its weights


@dataclass
class DataConfig:
    """A dataset in the unified layout; ``mean``/``std`` normalise images in [0, 1] (null: what the
    backbone's ImageNet weights expect, torchvision's ImageNet statistics otherwise; with ``channels`` other
    than 3, those RGB statistics repeated over the bands, as the adapted first convolution repeats its weights).
    ``channels``: the images' band count (3: RGB; e.g. 4 for RGB + near-infrared, 1 for a 16-bit grey band,
    read from TIFF, ``.npy`` or PNG files); it becomes the model's ``in_channels``."""

    root: str = ""
    channels: int = 3
    train_split: str = "train.txt"
    val_split: str | None = "val.txt"
    cache: bool = True
    workers: int = 1
    mean: list[float] | None = None
    std: list[float] | None = None


@dataclass
class AugmentConfig:
    """On-the-fly augmentation; ``crop_size`` is ``[height, width]`` (null: whole images)."""

    scale: list[float] = field(default_factory=lambda: [0.5, 2.0])
    crop_size: list[int] | None = field(default_factory=lambda: [256, 256])
    hflip: bool = True
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    hue: float = 0.03


@dataclass
class OptimizerConfig:
    """``name``: sgd, adamw or rmsprop; ``backbone_lr_scale`` multiplies ``lr`` for the backbone's parameters."""

    name: Literal["sgd", "adamw", "rmsprop"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    alpha: float = 0.9
    backbone_lr_scale: float = 1.0


@dataclass
class ScheduleConfig:
    """Learning-rate schedule per iteration: poly, cosine, exp (``gamma`` per epoch) or constant."""

    name: Literal["poly", "cosine", "exp", "constant"] = "poly"
    power: float = 0.9
    gamma: float = 0.995
    min_lr: float = 0.0
    warmup_epochs: float = 0.0


@dataclass
class LossTerm:
    """One term of the training loss, ``weight * name(logits, labels)`` (see :mod:`structseg.engine.losses`)."""

    name: Literal["cross_entropy", "dice", "focal", "lovasz"] = "cross_entropy"
    weight: float = 1.0
    label_smoothing: float = 0.0  # cross_entropy only
    gamma: float = 2.0  # focal only


@dataclass
class TrainConfig:
    """The loop: epochs, batch, loss weighting, precision, validation and early stopping."""

    epochs: int = 50
    batch_size: int = 8
    class_weights: str | list[float] | None = None
    loss: list[LossTerm] = field(default_factory=lambda: [LossTerm()])  # summed; class_weights apply to CE/focal
    aux_weight: float = 0.4
    amp: AmpMode = "auto"
    channels_last: bool = True
    val_every: int = 1
    patience: int = 0
    seed: int = 0
    threads: int = 0  # 0: OMP_NUM_THREADS when set, else all cores (divided among local processes)
    tensorboard: bool = True


@dataclass
class WeakConfig:
    """Weakly supervised training from image-level labels (seed 001's latent CRF): with ``tags`` set (a tags file,
    see :mod:`structseg.data.tags`), the training images and their tags are read from it alone (no label map is
    opened) and the loss is the negative evidence bound per pixel, ``(-E_q[log p(y|z)] + kl_weight * KL) / N``
    (:mod:`structseg.structured.latent_crf`). ``leak``: a tag's probability with no pixel of it; ``min_share``:
    the share of an image a tagged class must cover before it is explained (caps the likelihood's rates);
    ``prior``: the dense-CRF kernels of the prior (``smoothness_*``, ``appearance_*`` keys). ``method:
    expand_constrain`` trains the baseline instead (SEC's expand and constrain losses, the latter's CRF
    with the ``prior`` kernels, :mod:`structseg.structured.seed_expand_constrain`); ``method: retrain`` is the
    baseline's retraining round: ``teacher`` labels the tagged images (:mod:`structseg.engine.pseudo_labels`)
    and the run trains on those labels as on pixel labels."""

    tags: str | None = None
    # the seed's bound, the SEC baseline, or a supervised run on pseudo labels of ``teacher`` (written once per run)
    method: Literal["latent_crf", "expand_constrain", "retrain"] = "latent_crf"
    kl_weight: float = 1.0
    leak: float = 0.01
    min_share: float = 0.02
    prior: dict[str, Any] = field(default_factory=dict)
    gwrp_decay: float = 0.996  # expand_constrain: the rank-pooling decay on a 41 x 41 grid (rescaled to others)
    gwrp_decay_classes: dict[str, float] = field(default_factory=dict)  # per class name, replacing gwrp_decay
    # expand_constrain: per-image colour models added to the constrain term's unary (``weight``, ``rounds``,
    # ``bins``, ``prior`` of :class:`structseg.structured.colour_model.ColourModel`; empty or weight 0: off)
    colour: dict[str, Any] = field(default_factory=dict)
    # retrain: the network whose tag-restricted, CRF-refined (``prior`` kernels, ``colour`` models) predictions of
    # the tagged images become the labels; a shipped model's name or a run's checkpoint, itself trained from tags,
    # or a list of them (an ensemble: their softmax outputs averaged)
    teacher: str | list[str] | None = None


@dataclass
class Config:
    """A whole training recipe."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    weak: WeakConfig = field(default_factory=WeakConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class _Loader(yaml.SafeLoader):
    """YAML 1.1's safe loader, except that floats may be written in any notation (``1e-3``, ``2E5``):
    PyYAML alone reads a float without a dot as a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def yaml_load(text: str) -> Any:
    """Parse YAML text with :class:`_Loader` (safe; floats in any notation)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _pair(lo: float, hi: float, positive: bool = False):
    return lambda v: (isinstance(v, list) and len(v) == 2 and all(_finite(x) for x in v)
                      and (not positive or min(v) > 0) and lo <= min(v) and max(v) < hi)


# every value range, checked when a config is read: key -> (test, what is allowed)
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data.workers": (lambda v: v >= 0, "an integer >= 0"),
    "data.channels": (lambda v: v >= 1, "an integer >= 1 (the images' band count)"),
    "data.mean": (lambda v: v is None or (len(v) >= 1 and all(_finite(x) for x in v)),
                  "null or finite numbers, one per channel"),
    "data.std": (lambda v: v is None or (len(v) >= 1 and all(_finite(x) and x > 0 for x in v)),
                 "null or positive numbers, one per channel"),
    "augment.scale": (lambda v: _pair(0, math.inf, True)(v) and v[0] <= v[1], "[min, max] with 0 < min <= max"),
    "augment.crop_size": (lambda v: v is None or (len(v) == 2 and all(x > 0 for x in v)),
                          "null or [height, width], two positive integers"),
    "augment.brightness": (lambda v: _finite(v) and 0 <= v < 1, "a number in [0, 1)"),
    "augment.contrast": (lambda v: _finite(v) and 0 <= v < 1, "a number in [0, 1)"),
    "augment.saturation": (lambda v: _finite(v) and 0 <= v < 1, "a number in [0, 1)"),
    "augment.hue": (lambda v: _finite(v) and 0 <= v <= 0.5, "a number in [0, 0.5]"),
    "optimizer.lr": (lambda v: _finite(v) and v > 0, "a positive finite number"),
    "optimizer.momentum": (lambda v: _finite(v) and 0 <= v < 1, "a number in [0, 1)"),
    "optimizer.weight_decay": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "optimizer.betas": (_pair(0, 1), "two numbers in [0, 1)"),
    "optimizer.alpha": (lambda v: _finite(v) and 0 < v < 1, "a number in (0, 1)"),
    "optimizer.backbone_lr_scale": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "schedule.power": (lambda v: _finite(v) and v > 0, "a positive finite number"),
    "schedule.gamma": (lambda v: _finite(v) and 0 < v <= 1, "a number in (0, 1]"),
    "schedule.min_lr": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "schedule.warmup_epochs": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "train.epochs": (lambda v: v >= 1, "an integer >= 1"),
    "train.batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "train.class_weights": (lambda v: not isinstance(v, list) or all(_finite(x) and x >= 0 for x in v),
                            "null, 'median_frequency', 'enet' or a list of finite numbers >= 0"),
    "train.aux_weight": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "train.loss": (lambda v: bool(v) and all(_finite(t.weight) and t.weight >= 0 and 0 <= t.label_smoothing < 1
                                             and _finite(t.gamma) and t.gamma >= 0 for t in v),
                   "a non-empty list of terms with weight >= 0, label_smoothing in [0, 1), gamma >= 0"),
    "train.val_every": (lambda v: v >= 1, "an integer >= 1"),
    "train.patience": (lambda v: v >= 0, "an integer >= 0 (0: no early stopping)"),
    "train.seed": (lambda v: 0 <= v < 2 ** 63, "an integer >= 0"),
    "train.threads": (lambda v: v >= 0, "an integer >= 0 (0: OMP_NUM_THREADS or all cores)"),
    "weak.kl_weight": (lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    "weak.leak": (lambda v: _finite(v) and 0 < v < 1, "a number in (0, 1)"),
    "weak.min_share": (lambda v: _finite(v) and 0 < v <= 1, "a number in (0, 1]"),
    "weak.gwrp_decay": (lambda v: _finite(v) and 0 < v <= 1, "a number in (0, 1]"),
}


def check_ranges(obj: Any, ranges: dict[str, tuple[Callable[[Any], bool], str]], prefix: str = "") -> None:
    """Raise one :class:`ConfigError` for the first value outside its range (naming key, value, range)."""
    for key, (test, allowed) in ranges.items():
        node = obj
        for part in key.split("."):
            node = getattr(node, part)
        try:
            ok = test(node)
        except TypeError:
            ok = False
        if not ok:
            raise ConfigError(f"config key '{prefix}{key}': {node!r} is out of range; expected {allowed}")


def check_choices(obj: Any, prefix: str = "") -> None:
    """Check every ``Literal``-typed field of dataclass ``obj`` (and of the dataclasses in it): for objects built
    in Python, which do not pass through :func:`dataclass_from_dict`. Raises one :class:`ConfigError`."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, tp, key = getattr(obj, f.name), hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_choices(value, key + ".")
        elif typing.get_origin(tp) is Literal or (typing.get_origin(tp) is list
                                                 and typing.get_origin(typing.get_args(tp)[0]) is Literal):
            _coerce(value, tp, key)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp) and isinstance(value, str):
            return value
        raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(map(str, typing.get_args(tp)))}")
    if tp is type(None):
        if value is None:
            return None
    elif tp is Any:
        return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        if isinstance(value, (list, tuple)):
            (arg,) = typing.get_args(tp)
            return [_coerce(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    elif dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, key)
    raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")


def _from_dict(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix or 'top level'}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        where = f"section '{prefix}'" if prefix else "top level"
        raise ConfigError(f"unknown config key '{(prefix + '.') if prefix else ''}{unknown[0]}' in {where}; "
                          f"known keys: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name in data:
            key = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _coerce(data[name], hints[name], key)
    return cls(**kwargs)


def apply_override(data: dict, assignment: str) -> None:
    """Apply one ``a.b.c=value`` override (value in YAML syntax) to a raw config dict."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r}: expected KEY=VALUE, e.g. train.epochs=10")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {assignment!r}: '{part}' is not a section")
    node[parts[-1]] = value


def dataclass_from_dict(cls: type, data: dict | None, overrides: list[str] | tuple[str, ...] = (),
                        section: str = "") -> Any:
    """Build dataclass ``cls`` from a raw dict plus ``key=value`` overrides, checking keys and types."""
    data = yaml_load(yaml.safe_dump(data or {}))  # deep copy
    for o in overrides:
        apply_override(data, o)
    return _from_dict(cls, data, section)


def config_from_dict(data: dict, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a :class:`Config` from a raw dict plus ``key=value`` overrides; every value range-checked."""
    cfg = dataclass_from_dict(Config, data, overrides)
    check_ranges(cfg, RANGES)
    return cfg


def read_yaml(path: str | Path, what: str = "file") -> dict:
    """The mapping in a YAML file; a missing file or bad YAML is a :class:`ConfigError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        data = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (relative paths in it are relative to the current directory)."""
    data = read_yaml(path, "config file")
    try:
        return config_from_dict(data, overrides)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def save_config(cfg: Config, path: str | Path) -> None:
    from ._io import atomic_path
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
