"""A frozen segmentation network that also returns intermediate features (the DAE's ``h``).

``concat_h`` names features by stride: ``poolK`` is the network's stride-2^K map (``pool4`` = stride 16),
``input`` the normalised image. Any model from ``create_model`` works without knowing its layer names:
a model that describes its encoder (``feature_info``: every backbone model, the U-Net) is tapped at its
deepest feature map of that stride; for the others a probe forward pass records every module's output,
and the module with the most channels at that resolution is tapped (an activation or pooling output
first, then the earliest). ``layers={"pool4": "encoder.3"}`` names a module explicitly instead.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError

PROBE = 256  # probe input side; divisible by every stride up to 256


def _settled(module: nn.Module) -> bool:
    """An activation or pooling output (a feature map as a network passes it on), not a raw convolution."""
    return isinstance(module, (nn.ReLU, nn.ReLU6, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.MaxPool2d, nn.AvgPool2d))


def find_taps(model: nn.Module, names: list[str], layers: dict[str, str] | None = None) -> dict[str, str]:
    """Module name to tap for every ``poolK`` in ``names`` (``input`` needs no module)."""
    layers = dict(layers or {})
    modules = dict(model.named_modules())
    for name, module_name in layers.items():
        if module_name not in modules:
            raise ConfigError(f"segmenter_layers.{name}: no module {module_name!r} in the segmenter")
    wanted = [n for n in names if n != "input" and n not in layers]
    described = getattr(model, "feature_info", None) or []
    for n in list(wanted):
        at = [f.module for f in described if f.stride == 2 ** int(n[4:])]
        if at:
            layers[n] = at[-1]
            wanted.remove(n)
    if not wanted:
        return {n: layers[n] for n in names if n != "input"}
    seen: list[tuple[str, int, int, bool]] = []  # (module, height, channels, after a nonlinearity) in order
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen.append((n, o.shape[-2], o.shape[1], _settled(m)))
                                     if isinstance(o, torch.Tensor) and o.dim() == 4 else None)
             for n, m in modules.items() if n]
    try:
        was = model.training
        model.eval()
        with torch.no_grad():
            p = next(model.parameters())
            model(torch.zeros(1, 3, PROBE, PROBE, device=p.device, dtype=p.dtype))
        model.train(was)
    finally:
        for h in hooks:
            h.remove()
    for n in wanted:
        stride = 2 ** int(n[4:])
        cands = [(c, a, i, m) for i, (m, h, c, a) in enumerate(seen) if h == PROBE // stride]
        if not cands:
            raise ConfigError(f"concat_h {n!r}: the segmenter has no stride-{stride} feature map; "
                              f"name one with segmenter_layers.{n}")
        layers[n] = max(cands, key=lambda t: (t[0], t[1], -t[2]))[3]
    return {n: layers[n] for n in names if n != "input"}


class SegmenterWithFeatures(nn.Module):
    """``forward(x) -> (probabilities, {name: features})`` of a frozen network (no gradients, eval mode)."""

    def __init__(self, model: nn.Module, names: list[str], layers: dict[str, str] | None = None,
                 temperature: float = 1.0):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.names, self.temperature = list(names), temperature
        self.taps = find_taps(model, self.names, layers)
        self._store: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        for feature, module_name in self.taps.items():
            modules[module_name].register_forward_hook(
                lambda m, i, o, f=feature: self._store.__setitem__(f, o.float()))
        with torch.no_grad():
            _, h = self(torch.zeros(1, 3, PROBE // 4, PROBE // 4, device=next(model.parameters()).device))
        self.channels = {k: v.shape[1] for k, v in h.items()}

    def train(self, mode: bool = True):  # the segmenter stays frozen in eval mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self._store.clear()
        out = self.model(x)
        logits = out[0] if isinstance(out, tuple) else out
        probs = F.softmax(logits.float() / self.temperature, dim=1)
        h = {n: (x.float() if n == "input" else self._store[n]) for n in self.names}
        return probs, h
