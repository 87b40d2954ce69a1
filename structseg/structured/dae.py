"""Conditional denoising autoencoder for iterative inference (Romero et al. 2017, seed 000).

The DAE maps corrupted class probabilities ``y`` of a frozen segmentation network, together with
features ``h`` of that network, to clean class scores; its residual ``DAE(y, h) - y`` estimates the
score ``d log p(y | x) / dy``, and inference climbs it (:func:`iterative_inference`).

Architecture (the released code's ``kind='standard'``): ``n_pool + additional_pool`` levels of
``conv_before_pool`` 3x3 conv-ReLU layers (``n_filters * 2^p`` maps) and a 2x2 max pool; the
segmenter's features named in ``concat_h`` are concatenated after the DAE pool with the same number
(``pool4``: stride 16; ``input``: before the first conv), resized to that map's size. The decoder
unpools with the encoder's indices (``unpool_type='trackind'``; ``'standard'``: a 4x4 stride-2
transposed conv), applies a *linear* 3x3 conv and, with ``skip``, adds the encoder's pooled map.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import check_choices

N_POOL = 4  # the released code's encoder depth before ``additional_pool``


@dataclass
class DAEConfig:
    """The seed's ``dae_dict`` (defaults: its released CamVid configuration)."""

    kind: Literal["standard"] = "standard"
    dropout: float = 0.0
    skip: bool = True
    unpool_type: Literal["trackind", "standard"] = "trackind"
    noise: float = 0.5
    concat_h: list[str] = field(default_factory=lambda: ["pool4"])
    from_gt: bool = False
    n_filters: int = 64
    conv_before_pool: int = 1
    additional_pool: int = 2
    temperature: float = 1.0
    layer: Literal["probs_dimshuffle"] = "probs_dimshuffle"  # the DAE denoises the class probabilities
    bn: bool = False

    def validate(self) -> None:
        check_choices(self)
        levels = N_POOL + self.additional_pool
        for name in self.concat_h:
            if name != "input" and not (name.startswith("pool") and name[4:].isdigit()
                                        and 1 <= int(name[4:]) <= levels):
                raise ValueError(f"concat_h entry {name!r}: expected 'input' or pool1..pool{levels}")
        if self.n_filters < 1 or self.conv_before_pool < 1 or self.additional_pool < 0:
            raise ValueError("n_filters and conv_before_pool must be >= 1, additional_pool >= 0")
        if self.noise < 0 or self.temperature <= 0 or not 0 <= self.dropout < 1:
            raise ValueError("noise must be >= 0, temperature > 0 and dropout in [0, 1)")

    @staticmethod
    def stride_of(name: str) -> int:
        return 1 if name == "input" else 2 ** int(name[4:])


def _conv(cin: int, cout: int, bn: bool, relu: bool, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    if relu:
        layers.append(nn.ReLU(inplace=True))
    if dropout:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


class ConditionalDAE(nn.Module):
    """``forward(y, h) -> logits``; ``y``: ``(B, K, H, W)``, ``h``: dict name -> ``(B, C, h, w)`` features."""

    def __init__(self, num_classes: int, h_channels: dict[str, int] | None = None, cfg: DAEConfig | None = None):
        super().__init__()
        self.cfg = cfg or DAEConfig()
        self.cfg.validate()
        c = self.cfg
        h_channels = h_channels or {}
        missing = [n for n in c.concat_h if n not in h_channels]
        if missing:
            raise ValueError(f"concat_h {missing} needs the channel count of those segmenter features")
        self.levels = N_POOL + c.additional_pool
        self.stride = 2 ** self.levels
        widths = [c.n_filters * 2 ** p for p in range(self.levels)]
        self.encoder = nn.ModuleList()
        cin = num_classes + (h_channels["input"] if "input" in c.concat_h else 0)
        for p in range(self.levels):
            convs = [_conv(cin if i == 0 else widths[p], widths[p], c.bn, True, c.dropout)
                     for i in range(c.conv_before_pool)]
            self.encoder.append(nn.Sequential(*convs))
            cin = widths[p] + h_channels.get(f"pool{p + 1}", 0) * (f"pool{p + 1}" in c.concat_h)
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for p in range(self.levels, 0, -1):  # decoder stage p undoes pool p
            channels_in = widths[p - 1]
            if c.unpool_type == "standard":
                self.up.append(nn.ConvTranspose2d(channels_in, channels_in, 4, stride=2, padding=1))
            out = widths[p - 2] if p > 1 else num_classes
            self.decoder.append(_conv(channels_in, out, c.bn and p > 1, False, 0.0))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.xavier_uniform_(m.weight)  # Glorot, as in Lasagne
                nn.init.zeros_(m.bias)

    def forward(self, y: torch.Tensor, h: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        h = h or {}
        size = y.shape[-2:]
        s = self.stride
        ph, pw = (-size[0]) % s, (-size[1]) % s
        x = F.pad(y, (0, pw, 0, ph))
        if "input" in self.cfg.concat_h:
            x = torch.cat([x, self._fit(h["input"], x)], 1)
        pooled, switches = [], []
        for p, block in enumerate(self.encoder):
            x, idx = self.pool(block(x))
            pooled.append(x)
            switches.append(idx)
            name = f"pool{p + 1}"
            if name in self.cfg.concat_h:
                x = torch.cat([x, self._fit(h[name], x)], 1)
        x = pooled[-1]
        for i, p in enumerate(range(self.levels, 0, -1)):
            if self.cfg.unpool_type == "trackind":
                x = F.max_unpool2d(x, switches[p - 1], 2, 2)
            else:
                x = self.up[i](x)
            x = self.decoder[i](x)
            if self.cfg.skip and p > 1:
                x = x + pooled[p - 2]
        return x[..., :size[0], :size[1]]

    @staticmethod
    def _fit(feature: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if feature.shape[-2:] == like.shape[-2:]:
            return feature
        return F.interpolate(feature, size=like.shape[-2:], mode="bilinear", align_corners=False)


def corrupt(y: torch.Tensor, noise: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Additive Gaussian noise of std ``noise`` (no clipping, no renormalisation: the released code)."""
    if noise <= 0:
        return y
    return y + noise * torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)


def dae_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int, lmb: float = 1.0) -> torch.Tensor:
    """Cross-entropy + ``lmb`` * squared error to the one-hot target, both averaged over non-void pixels
    (the squared error first averaged over classes, as in the released code)."""
    valid = target != ignore_index
    ce = F.cross_entropy(logits, target, ignore_index=ignore_index)
    if lmb == 0 or not valid.any():
        return ce
    probs = torch.softmax(logits, 1)
    onehot = F.one_hot(target.clamp(max=logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    mse = ((probs - onehot) ** 2).mean(1)[valid].mean()
    return ce + lmb * mse


@torch.no_grad()
def iterative_inference(dae: ConditionalDAE, y0: torch.Tensor, h: dict[str, torch.Tensor], step: float,
                        iterations: int, tol: float = 1e-3, on_iteration=None) -> torch.Tensor:
    """Gradient ascent on log p(y | x) with the DAE's score estimate, batched over images.

    ``y <- clip(y + step * (DAE(y, h) - y), 0, 1)`` with ``DAE(y, h)`` the DAE's softmax output; an
    image stops (its ``y`` is frozen) once the mean over pixels of ``|DAE(y, h) - y|_2`` falls below
    ``tol``. ``on_iteration(i, y)`` is called after every iteration (e.g. to score it).
    """
    y = y0.clone()
    active = torch.ones(y.shape[0], dtype=torch.bool, device=y.device)
    for i in range(iterations):
        if not active.any():
            if on_iteration is not None:
                on_iteration(i + 1, y)
            continue
        idx = active.nonzero().flatten()
        sub_h = {k: v[idx] for k, v in h.items()}
        r = torch.softmax(dae(y[idx], sub_h).float(), 1)
        g = r - y[idx]
        y[idx] = (y[idx] + step * g).clamp_(0, 1)
        norm = g.norm(dim=1).mean(dim=(1, 2))
        active[idx[norm < tol]] = False
        if on_iteration is not None:
            on_iteration(i + 1, y)
    return y
