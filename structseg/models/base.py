"""The contract every model follows: logits at input resolution, for any input size.

Subclasses implement ``forward_padded`` on inputs whose sides are multiples of ``stride``;
``forward`` pads the input (reflect) up to that multiple and crops the logits back. Auxiliary
outputs (deep supervision) come the same way for every model: ``model(x, return_aux=True)`` returns
``(logits, [aux_logits, ...])`` at input resolution (an empty list for models without them), through
``forward_padded_aux``; plain ``model(x)`` always returns the logits tensor alone.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SegmentationModel(nn.Module):
    """Base class: ``forward(x (N,C,H,W)) -> logits (N,num_classes,H,W)``.

    ``feature_info`` lists the model's encoder feature maps (stride, channels, module name relative to
    the model), as the backbone contract does; empty for models that do not describe theirs.
    """

    stride: int = 32
    feature_info: list = []
    # the final 1x1 classifier, whose output ``forward_padded`` returns as is (None: not declared); layers on
    # the logits at the model's own resolution (the dual-decomposition CRF) read its input and output
    classifier_module: str | None = None

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_padded_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and auxiliary logits (at any resolution); models with auxiliary heads override it."""
        return self.forward_padded(x), []

    def forward(self, x: torch.Tensor, return_aux: bool = False):
        h, w = x.shape[-2:]
        s = self.stride
        ph, pw = (-h) % s, (-w) % s
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or ph or pw:  # exported graphs always pad
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        size = x.shape[-2:]

        def full(t: torch.Tensor) -> torch.Tensor:
            if t.shape[-2:] != size:
                t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
            return t[..., :h, :w]

        if not return_aux:
            return full(self.forward_padded(x))
        out, aux = self.forward_padded_aux(x)
        return full(out), [full(a) for a in aux]


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, bn: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def init_weights(module: nn.Module) -> None:
    """He initialisation for convolutions, unit BN, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
