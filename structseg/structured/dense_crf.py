"""Fully connected CRF with Gaussian edge potentials (Krähenbühl & Koltun, NIPS 2011).

Mean-field inference ``Q <- softmax(-U - sum_m mu_m (K_m Q))`` with two kernels over pixel
features: *smoothness* (position, ``exp(-|p_i - p_j|^2 / 2 theta_gamma^2)``) and *appearance*
(position and colour, ``exp(-|p_i - p_j|^2 / 2 theta_alpha^2 - |I_i - I_j|^2 / 2 theta_beta^2)``),
each filtered on a permutohedral lattice with pydensecrf's symmetric normalisation
``n * K(n * Q)``, ``n = 1 / sqrt(K 1)``. Colour is in 0-255 units, positions in pixels.

Differentiable with respect to the unaries (the filter's backward pass is its transpose) and to
the kernel weights and compatibilities; batched; CPU and CUDA.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .lattice import PermutohedralLattice


class _NormalisedFilter(torch.autograd.Function):
    """``y = n * K(n * x)``; backward ``n * K^T(n * g)``. The lattice and ``n`` are constants."""

    @staticmethod
    def forward(ctx, values, lattice, norm):
        ctx.lattice, ctx.norm = lattice, norm
        return lattice.filter(values * norm) * norm

    @staticmethod
    def backward(ctx, grad):
        return (ctx.lattice.filter(grad.contiguous() * ctx.norm, transpose=True) * ctx.norm).contiguous(), None, None


class GaussianKernel:
    """A symmetric-normalised Gaussian filter over fixed features ``(B, N, d)``."""

    def __init__(self, features: torch.Tensor):
        self.lattice = PermutohedralLattice(features)
        b, n = features.shape[0], features.shape[1]
        ones = torch.ones(b, n, 1, dtype=self.lattice.dtype, device=features.device)
        self.norm = 1.0 / torch.sqrt(self.lattice.filter(ones) + 1e-20)

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        return _NormalisedFilter.apply(q, self.lattice, self.norm.to(q.dtype))


_POSITION_CACHE: dict[tuple, GaussianKernel] = {}


def position_features(height: int, width: int, sxy: float, device, dtype=torch.float32) -> torch.Tensor:
    """``(1, H*W, 2)`` pixel coordinates ``(x, y) / sxy`` in row-major order."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                            torch.arange(width, device=device, dtype=dtype), indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], 1)[None] / sxy


def position_kernel(height: int, width: int, sxy: float, device, dtype=torch.float32) -> GaussianKernel:
    """The smoothness kernel does not depend on the image: build it once per size and width."""
    key = (height, width, float(sxy), str(device), dtype)
    if key not in _POSITION_CACHE:
        if len(_POSITION_CACHE) >= 16:
            _POSITION_CACHE.pop(next(iter(_POSITION_CACHE)))
        _POSITION_CACHE[key] = GaussianKernel(position_features(height, width, sxy, device, dtype))
    return _POSITION_CACHE[key]


def appearance_features(image: torch.Tensor, sxy: float, srgb: float) -> torch.Tensor:
    """``(B, H*W, 5)``: ``(x, y) / sxy`` and ``(r, g, b) / srgb`` for images ``(B, 3, H, W)`` in 0-255."""
    b, _, h, w = image.shape
    pos = position_features(h, w, sxy, image.device, image.dtype).expand(b, -1, -1)
    rgb = image.flatten(2).transpose(1, 2) / srgb
    return torch.cat([pos, rgb], 2)


@dataclass
class CRFParams:
    """Dense-CRF settings; defaults are Krähenbühl's (pydensecrf's examples).

    DeepLab-v2 on VOC used appearance 4 / xy 67 / rgb 3, smoothness 3 / xy 1, 10 iterations.
    """

    iterations: int = 5
    smoothness_weight: float = 3.0
    smoothness_xy: float = 3.0
    appearance_weight: float = 10.0
    appearance_xy: float = 80.0
    appearance_rgb: float = 13.0
    compatibility: list[float] | list[list[float]] | None = None  # None: Potts; C values: diagonal; CxC: full

    def compatibility_tensor(self) -> torch.Tensor | None:
        return None if self.compatibility is None else torch.tensor(self.compatibility, dtype=torch.float32)

    def validate(self) -> None:
        if not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"iterations must be a positive integer, got {self.iterations!r}")
        for name in ("smoothness_xy", "appearance_xy", "appearance_rgb"):
            v = getattr(self, name)
            if not v > 0:
                raise ValueError(f"{name} (a kernel width) must be positive, got {v!r}")
        for name in ("smoothness_weight", "appearance_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)!r}")


def _check_inputs(unary: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if unary.dim() == 3:
        unary = unary[None]
    if image.dim() == 3:
        image = image[None]
    if unary.dim() != 4:
        raise ValueError(f"unary must be (B, C, H, W) or (C, H, W), got shape {tuple(unary.shape)}")
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be RGB, (B, 3, H, W) or (3, H, W), got shape {tuple(image.shape)}")
    if unary.shape[0] != image.shape[0] or unary.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"unary {tuple(unary.shape)} and image {tuple(image.shape)} differ in batch or size "
                         "(H, W); resize the network output to the image first")
    return unary, image


def unary_from_probabilities(probs: torch.Tensor, clip: float = 1e-5) -> torch.Tensor:
    """``-log(max(p, clip))``, pydensecrf's ``unary_from_softmax``; rejects NaN and negative values."""
    if not torch.isfinite(probs).all():
        raise ValueError("probabilities contain NaN or infinity")
    if (probs < 0).any():
        raise ValueError("probabilities contain negative values")
    return -torch.log(probs.clamp(min=clip))


def mean_field(unary: torch.Tensor, image: torch.Tensor, params: CRFParams,
               compatibility: torch.Tensor | None = None,
               weights: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Mean-field inference; returns ``Q`` ``(B, C, H, W)``.

    ``unary`` is the energy ``U`` (e.g. ``-log p``); ``image`` is RGB in 0-255. ``compatibility``
    is applied to both kernels' messages: None for Potts (each kernel's weight rewards agreeing labels,
    equivalent to the penalty ``mu = 1 - I``); a ``(C,)`` vector for a diagonal compatibility (a
    per-class reward multiplying the weights); a ``(C, C)`` matrix for a full label-compatibility
    *penalty* ``mu`` (``msg_l = -sum_l' mu[l, l'] (K Q)_l'``).
    ``weights`` (optional tensors) replace the smoothness and appearance weights, e.g. learned ones.
    """
    params.validate()
    unary, image = _check_inputs(unary, image)
    c_ = unary.shape[1]
    if compatibility is not None and tuple(compatibility.shape) not in ((c_,), (c_, c_)):
        raise ValueError(f"compatibility of shape {tuple(compatibility.shape)}: expected ({c_},) or ({c_}, {c_})")
    if not torch.isfinite(unary).all():
        raise ValueError("unary contains NaN or infinity")
    b, c, h, w = unary.shape
    img = image.to(unary.dtype if unary.is_floating_point() else torch.float32)
    smooth = position_kernel(h, w, params.smoothness_xy, unary.device,
                             torch.float64 if unary.dtype == torch.float64 else torch.float32)
    appear = GaussianKernel(appearance_features(img, params.appearance_xy, params.appearance_rgb))
    u = unary.flatten(2).transpose(1, 2)  # (B, N, C)
    q = torch.softmax(-u, dim=2)
    for _ in range(params.iterations):
        qs = q.transpose(0, 1).reshape(h * w, b * c)  # batch into channels: one shared lattice
        ks = smooth(qs[None])[0].reshape(h * w, b, c).transpose(0, 1)
        ka = appear(q)
        ws, wa = weights if weights is not None else (params.smoothness_weight, params.appearance_weight)
        message = ws * ks + wa * ka
        if compatibility is None:
            q = torch.softmax(message - u, dim=2)
        elif compatibility.dim() == 1:
            q = torch.softmax(message * compatibility.to(message.dtype) - u, dim=2)
        else:
            q = torch.softmax(-u - message @ compatibility.T.to(message.dtype), dim=2)
    return q.transpose(1, 2).reshape(b, c, h, w).contiguous()


class DenseCRF(torch.nn.Module):
    """Dense-CRF post-processing: ``DenseCRF()(logits=..., image=...)`` -> probabilities ``(B, C, H, W)``."""

    def __init__(self, params: CRFParams | None = None, **kwargs):
        super().__init__()
        self.params = params or CRFParams(**kwargs)
        self.params.validate()

    def forward(self, image: torch.Tensor, logits: torch.Tensor | None = None,
                probs: torch.Tensor | None = None) -> torch.Tensor:
        if (logits is None) == (probs is None):
            raise ValueError("pass exactly one of logits= or probs=")
        if logits is not None:
            if not torch.isfinite(logits).all():
                raise ValueError("logits contain NaN or infinity")
            unary = -F.log_softmax(logits, dim=-3)
        else:
            unary = unary_from_probabilities(probs)
        return mean_field(unary, image, self.params, self.params.compatibility_tensor())
