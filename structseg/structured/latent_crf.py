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

import math

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


class _LogProducts(torch.autograd.Function):
    """``L[p, m] = sum_j log(1 - q[p, j] a[m, p])`` for rows ``q`` ``(P, N)`` and factors ``a`` ``(M, P)``, without
    the ``(P, M, N)`` tensor: one ``m`` at a time, forward and backward (``dL/dq[p, j] = -sum_m g[p, m] a[m, p] /
    (1 - q a)``, ``dL/da[m, p] = -sum_j g[p, m] q / (1 - q a)``, the latter carrying the gradient to the learned
    tag rates). Elementwise work in ``q``'s dtype, sums over pixels in float64."""

    @staticmethod
    def _top(dtype: torch.dtype) -> float:
        return 1 - 1e-7 if dtype == torch.float32 else 1 - 1e-15  # keeps log(1 - q a) finite

    @staticmethod
    def forward(ctx, q: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(q, a)
        aq, top = a.to(q.dtype), _LogProducts._top(q.dtype)
        return torch.stack([torch.log1p(-(q * aq[m].unsqueeze(1)).clamp_(max=top)).sum(1, dtype=torch.float64)
                            for m in range(a.shape[0])], 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        q, a = ctx.saved_tensors
        aq, top = a.to(q.dtype), _LogProducts._top(q.dtype)
        gq = torch.zeros_like(q) if ctx.needs_input_grad[0] else None
        ga = torch.zeros_like(a) if ctx.needs_input_grad[1] else None
        for m in range(a.shape[0]):
            am = aq[m].unsqueeze(1)  # (P, 1)
            inv = 1 / (1 - (q * am).clamp(max=top))  # (P, N)
            g = grad[:, m].to(q.dtype).unsqueeze(1)
            if gq is not None:
                gq -= g * am * inv
            if ga is not None:
                ga[m] = -(g * q * inv).sum(1, dtype=torch.float64).to(a.dtype)
        return gq, ga


def tag_log_likelihood_bound(q: torch.Tensor, tags: torch.Tensor, rate: torch.Tensor, leak: float = 0.01,
                             terms: int = 64) -> torch.Tensor:
    """A lower bound of ``E_q[log p(y | z)]`` per image ``(B,)``, exact up to the series' tail bound.

    The likelihood of the tags is a noisy-OR per class with a leak: each pixel labelled ``k`` reveals class
    ``k`` with probability ``1 - exp(-rate_k)``, and a class is tagged without any pixel with probability
    ``leak``:

        p(y_k = 0 | z) = (1 - leak) exp(-rate_k n_k),     n_k = number of pixels with z_j = k.

    Under the factorised ``q``: for an absent tag, ``E log p = log(1 - leak) - rate_k sum_j q_jk`` (exact); for a
    present tag, with ``c = 1 - leak``, ``log(1 - c e^{-r n}) = -sum_{m >= 1} c^m e^{-m r n} / m`` and
    ``E_q[e^{-m r n_k}] = prod_j (1 - q_jk (1 - e^{-m r}))`` (independent pixels), so

        E log p = -sum_{m=1..M} c^m / m * P_m  -  tail,     P_m = prod_j (1 - q_jk (1 - e^{-m r_k})),

    with ``M = terms`` and the tail bounded by ``P_{M+1} * sum_{m > M} c^m / m`` (``P_m`` falls with ``m``): a
    lower bound, so the evidence bound built on it stays one. ``tags`` ``(B, K)`` is multi-hot, ``rate`` ``(K,)``
    positive, ``q`` ``(B, K, H, W)``.
    """
    if not 0 < leak < 1:
        raise ValueError(f"leak must be in (0, 1), got {leak}")
    b, k = q.shape[:2]
    flat = q.flatten(2)  # (B, K, N), in q's dtype; sums over pixels in float64
    c = 1.0 - leak
    rate64 = rate.to(torch.float64)
    absent = math.log(c) - rate64 * flat.sum(2, dtype=torch.float64)  # (B, K)
    m = torch.arange(1, terms + 2, dtype=torch.float64, device=flat.device)  # 1..M+1
    reveal = 1 - torch.exp(-m.view(-1, 1) * rate64.view(1, k))  # (M+1, K)
    # log P_m = sum_j log(1 - q_jk (1 - e^{-m r_k})) for m = 1..M+1, only for the (image, class) pairs that are
    # tagged (about 3 of 21 on MSRC): the absent ones need only the linear term above
    tags = tags.to(torch.float64)
    bi, ki = tags.nonzero(as_tuple=True)
    present = torch.zeros(b, k, dtype=torch.float64, device=flat.device)
    if bi.numel():
        log_p = _LogProducts.apply(flat[bi, ki], reveal[:, ki])  # (P, M+1)
        coeff = c ** m[:terms] / m[:terms]  # (M,)
        tail = -math.log1p(-c) - coeff.sum()  # sum_{m > M} c^m / m
        value = -(coeff.view(1, -1) * log_p[:, :terms].exp()).sum(1) - log_p[:, terms].exp() * tail
        present = present.index_put((bi, ki), value)
    return (tags * present + (1 - tags) * absent).sum(1)


def tag_log_likelihood(labels: torch.Tensor, tags: torch.Tensor, rate: torch.Tensor, num_classes: int,
                       leak: float = 0.01) -> torch.Tensor:
    """``log p(y | z)`` of hard labellings ``labels`` ``(B, H, W)`` (the noisy-OR above, exactly): for tests and
    for scoring samples."""
    counts = torch.stack([(labels == c).flatten(1).sum(1) for c in range(num_classes)], 1).to(torch.float64)
    log_off = math.log(1 - leak) - rate.to(torch.float64) * counts  # log p(y_k = 0 | z)
    log_on = torch.log1p(-torch.exp(log_off).clamp(max=1 - 1e-15))
    tags = tags.to(torch.float64)
    return (tags * log_on + (1 - tags) * log_off).sum(1)
