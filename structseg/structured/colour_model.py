"""Per-image colour models of the tagged classes (GrabCut's idea, as a unary for the dense CRF).

A network trained from tags knows *which* classes an image holds better than *where* they end: the objects
spread over the stuff they stand on. Inside one image, though, a cow and the grass under it rarely share
their colours. From soft labels ``q`` each class gets a colour histogram of the image (``bins`` levels per
RGB channel, soft counts ``sum_j q_jk [bin(x_j) = b]`` plus ``prior`` per bin), and its pixels the
log-likelihood ``log p(bin(x_j) | k)``. :func:`refine_with_colour` adds ``weight`` times that to the
network's (tag-restricted) log-probabilities and re-estimates the histograms ``rounds`` times, as GrabCut
alternates colour models and labels; the dense CRF then smooths the result (see
:func:`structseg.structured.seed_expand_constrain.tag_restricted_marginals`).

Measured on MSRC-21 val with each image's true tags (``benchmarks/colour_refinement.py``): the expand / constrain
baseline's tag-restricted prediction goes from 63.3 to 67.3 mIoU with weight 2, 16 bins, 3 rounds (64.6 -> 67.5
with the dense CRF after each).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def colour_bins(rgb: torch.Tensor, bins: int) -> torch.Tensor:
    """The histogram bin ``(B, H*W)`` of each pixel of ``rgb`` ``(B, 3, H, W)`` (0-255), ``bins`` levels a channel."""
    if not 2 <= bins <= 64:
        raise ValueError(f"colour bins must be in [2, 64], got {bins}")
    level = (rgb.detach().float().clamp(0, 255) * bins / 256).long().clamp(max=bins - 1)
    return ((level[:, 0] * bins + level[:, 1]) * bins + level[:, 2]).flatten(1)


def colour_log_likelihood(q: torch.Tensor, index: torch.Tensor, bins: int, prior: float = 0.5) -> torch.Tensor:
    """``log p(colour_j | k)`` ``(B, K, N)`` under each image's histogram of class ``k``, weighted by ``q``
    ``(B, K, N)``; ``index`` from :func:`colour_bins`; ``prior`` pseudo-counts per bin keep empty bins finite."""
    b, k, _ = q.shape
    counts = torch.full((b, k, bins ** 3), float(prior), dtype=q.dtype, device=q.device)
    counts.scatter_add_(2, index[:, None, :].expand(b, k, -1), q)
    log_hist = torch.log(counts) - torch.log(counts.sum(2, keepdim=True))
    return torch.gather(log_hist, 2, index[:, None, :].expand(b, k, -1))


@torch.no_grad()
def refine_with_colour(log_probs: torch.Tensor, rgb: torch.Tensor, weight: float, rounds: int = 3,
                       bins: int = 16, prior: float = 0.5) -> torch.Tensor:
    """Log-probabilities ``(B, K, H, W)``: ``log_softmax(log_probs + weight * log p(colour | k))`` with the
    colour models re-estimated from the previous round's result, ``rounds`` times (no gradient).
    ``log_probs`` is typically the network's log-softmax with absent classes at a large negative value."""
    b, k, h, w = log_probs.shape
    base = log_probs.detach().float().flatten(2)
    index = colour_bins(rgb, bins)
    refined = torch.log_softmax(base, 1)
    for _ in range(rounds):
        likelihood = colour_log_likelihood(refined.exp(), index, bins, prior)
        refined = torch.log_softmax(base + weight * likelihood, 1)
    return refined.view(b, k, h, w)


@dataclass(frozen=True)
class ColourModel:
    """Settings of :func:`refine_with_colour`, checked by :meth:`validate`; callers pass None to turn it off."""

    weight: float = 0.0
    rounds: int = 3
    bins: int = 16
    prior: float = 0.5

    def validate(self) -> None:
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"colour weight must be a finite number >= 0, got {self.weight!r}")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise ValueError(f"colour rounds must be an integer >= 1, got {self.rounds!r}")
        if isinstance(self.bins, bool) or not isinstance(self.bins, int) or not 2 <= self.bins <= 64:
            raise ValueError(f"colour bins must be an integer in [2, 64], got {self.bins!r}")
        if not (math.isfinite(self.prior) and self.prior > 0):
            raise ValueError(f"colour prior must be a finite number > 0, got {self.prior!r}")

    def __call__(self, log_probs: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
        return refine_with_colour(log_probs, rgb, self.weight, self.rounds, self.bins, self.prior)
