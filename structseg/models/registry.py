"""The model registry: ``@register_model`` builders behind ``create_model`` and ``list_models``."""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable

from ..errors import ConfigError
from .base import SegmentationModel

MODELS: dict[str, Callable[..., SegmentationModel]] = {}


def register_model(builder: Callable[..., SegmentationModel]) -> Callable[..., SegmentationModel]:
    """Make ``builder(num_classes, **kwargs)`` available as ``create_model(builder.__name__, ...)``."""
    if builder.__name__ in MODELS:
        raise ValueError(f"model {builder.__name__!r} is registered twice")
    MODELS[builder.__name__] = builder
    return builder


def list_models() -> list[str]:
    """The names ``create_model`` accepts, sorted."""
    return sorted(MODELS)


def model_arguments(name: str) -> dict[str, Any]:
    """The keyword arguments of model ``name`` and their defaults (``num_classes`` excluded)."""
    sig = inspect.signature(_builder(name))
    return {k: p.default for k, p in sig.parameters.items() if k != "num_classes"}


def _builder(name: str) -> Callable[..., SegmentationModel]:
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint}; available: {', '.join(list_models())}")
    return MODELS[name]


def create_model(name: str, num_classes: int, **kwargs: Any) -> SegmentationModel:
    """Build model ``name`` with ``num_classes`` outputs; unknown keyword arguments are an error."""
    allowed = model_arguments(name)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ConfigError(f"model {name!r} has no argument(s) {unknown}; accepted: {sorted(allowed)}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    for key, value in kwargs.items():
        _check_argument(name, key, value)
    try:
        return _builder(name)(num_classes, **kwargs)
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError) as e:  # an argument the layers cannot take
        raise ConfigError(f"model {name!r} cannot be built with {kwargs}: {e}") from None


# keyword arguments that must be positive integers / probabilities, whatever the model
_POSITIVE_INTS = ("base_channels", "depth", "features", "decoder_channels", "in_channels")


def _check_argument(model: str, key: str, value: Any) -> None:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"model {model!r}: argument {key}={value!r} is out of range; expected {expected}")
    if key in _POSITIVE_INTS:
        values = value if isinstance(value, (list, tuple)) and key == "decoder_channels" else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
            raise bad("a positive integer" + (" or a list of them" if key == "decoder_channels" else ""))
    elif key == "dropout" and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                   and 0 <= value < 1):
        raise bad("a number in [0, 1)")
    elif key in ("aux_head", "bilinear") and not isinstance(value, bool):
        raise bad("true or false")
    elif key == "backbone" and value is not None and not isinstance(value, str):
        raise bad("a backbone name")
