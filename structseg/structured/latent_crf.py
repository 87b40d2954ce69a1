"""The latent-CRF prior of seed 001 (Pandey & Dukkipati 2017, arXiv 1705.01262 v1): a fully connected CRF over the
pixel labels z with pairwise terms only, ``p(z | x) ~ exp(-E(z))``, and its KL divergence from a fully
factorised ``q(z) = prod_j q_j(z_j)`` (the segmentation network's softmax).

``E(z) = 1/2 sum_{j, j'} sum_k w_k Kt_k[j, j'] mu(z_j, z_j')`` with the Potts penalty ``mu = 1 - I`` and the
dense CRF's two kernels ``Kt_k`` (smoothness: position; appearance: position and colour), symmetrically
normalised, exactly the operator the mean-field inference of :mod:`.dense_crf` uses (permutohedral lattice).
Under ``q`` the KL has a closed form, up to the constant ``log Z(x)`` of the prior:

    KL(q || p) = sum_j sum_a q_j(a) log q_j(a) + 1/2 sum_j sum_a q_j(a) sum_b mu(a, b) m_j(b) + log Z,
    m = sum_k w_k Kt_k q      (one mean-field message)

and its gradient in ``q_j(a)`` is ``log q_j(a) + 1 + sum_b mu(a, b) m_j(b)``: one message, no sampling.
(The lattice's per-axis blurs do not commute where lattice vertices are missing, so the filter is
symmetric only up to such border effects; the energy is a quadratic form and sees its symmetric part,
and the gradient, by autograd through the lattice, is the message of that symmetric part.)

The lattice filter includes each pixel's interaction with itself, ``Kt[j, j] > 0``; the expectation above
keeps that term, where the exact ``E_q[E(z)]`` has none (a pixel has one label, and ``mu(a, a) = 0``). The
computed KL therefore exceeds the exact one by ``1/2 sum_j (sum_k w_k Kt_k[j, j]) (1 - ||q_j||^2) >= 0``: the
evidence bound built on it stays a lower bound of ``log p(y | x)``, slightly looser (small for the wide
appearance kernel, whose ``Kt[j, j]`` is about the inverse of the number of pixels it spans).
"""
from __future__ import annotations

import torch

from .dense_crf import CRFParams, message_operator


def crf_messages(q: torch.Tensor, image: torch.Tensor, params: CRFParams) -> torch.Tensor:
    """``m = sum_k w_k Kt_k q`` for ``q`` ``(B, K, H, W)`` and RGB ``image`` ``(B, 3, H, W)`` (0-255), differentiable."""
    b, k, h, w = q.shape
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    op = message_operator(image.to(dtype), params, dtype)
    flat = q.to(dtype).permute(0, 2, 3, 1).reshape(b * h * w, k)
    m = op(flat, (params.smoothness_weight, params.appearance_weight))
    return m.view(b, h, w, k).permute(0, 3, 1, 2)


def expected_potts_energy(q: torch.Tensor, image: torch.Tensor, params: CRFParams) -> torch.Tensor:
    """``1/2 sum_j q_j . (mu m_j)`` per image ``(B,)``, with ``mu = 1 - I``: ``1/2 sum_j (sum_b m_j(b) - q_j . m_j)``."""
    m = crf_messages(q, image, params)
    q = q.to(m.dtype)
    return 0.5 * (m.sum(1) - (q * m).sum(1)).flatten(1).sum(1)


def negative_entropy(q: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``sum_j sum_a q_j(a) log q_j(a)`` per image ``(B,)`` (0 log 0 = 0)."""
    return (q * torch.log(q.clamp(min=eps))).flatten(1).sum(1)


def kl_to_crf_prior(q: torch.Tensor, image: torch.Tensor, params: CRFParams | None = None) -> torch.Tensor:
    """``KL(q || p_CRF) - log Z(x)`` per image ``(B,)`` for pixel distributions ``q`` ``(B, K, H, W)`` (each
    pixel's summing to 1) and the prior's RGB ``image`` ``(B, 3, H, W)`` in 0-255 (see the module's note on the
    lattice's self-interaction)."""
    params = params or CRFParams()
    params.validate()
    if q.dim() != 4 or image.shape[0] != q.shape[0] or image.shape[-2:] != q.shape[-2:]:
        raise ValueError(f"q {tuple(q.shape)} and image {tuple(image.shape)} must be (B, K, H, W) and (B, 3, H, W) "
                         "of the same batch and size")
    return negative_entropy(q) + expected_potts_energy(q, image, params)
