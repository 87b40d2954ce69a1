"""Max-marginals of chain CRFs (seed 002's sub-problem solver), batched over chains, any number of labels.

A chain of length L has unaries ``u_i(s)`` and pairwise scores ``P_i(s, s')`` between sites ``i`` and
``i + 1`` (scores to maximise, as logits are). With ``S(y) = sum_i u_i(y_i) + sum_i P_i(y_i, y_{i+1})``:

- smoothed (temperature ``gamma > 0``): ``M_i(s) = gamma * log sum_{y: y_i = s} exp(S(y) / gamma)``, so
  ``softmax(M_i / gamma)`` is the exact marginal of ``p ~ exp(S / gamma)`` and ``gamma * logsumexp(M_i / gamma)``
  is ``gamma * log Z`` at every position;
- hard (Viterbi): ``M_i(s) = max_{y: y_i = s} S(y)``.

Both come from one forward and one backward recursion, ``M = L + R - u``, as in the released CUDA kernels
(``dp_ne_cuda_kernel.cu``, ``dp_cuda_kernel.cu`` of taconite/DDD-Differentiable-Dual-Decomposition).

Memory: the autograd function keeps only ``L`` and ``R`` (2K floats per site) besides its inputs, and
recomputes the K x K transition weights in the backward pass, instead of storing the 4 K^2 floats per site
the released kernel keeps (K = 21: 42 instead of 1764 floats per site and direction).
"""
from __future__ import annotations

import torch


def _step(prev: torch.Tensor, pair: torch.Tensor, gamma: float | None, over: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(value, weights)`` of ``gamma * logsumexp`` (or max) of ``prev + pair`` over axis ``over`` (1 or 2 of
    ``(N, K, K)``); ``weights`` is d value / d (prev + pair): a softmax, or one-hot at the argmax."""
    z = prev.unsqueeze(2 if over == 1 else 1) + pair
    if gamma is None:
        value, idx = z.max(over)
        return value, torch.zeros_like(z).scatter_(over, idx.unsqueeze(over), 1.0)
    value = gamma * torch.logsumexp(z / gamma, over)
    return value, torch.softmax(z / gamma, over)


def _recursions(u: torch.Tensor, pair: torch.Tensor, gamma: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The left (``L``) and right (``R``) messages-plus-unary, ``(N, K, L)`` each."""
    n = u.shape[-1]
    left, right = [u[..., 0]], [u[..., -1]]
    for i in range(1, n):  # L_i(s) = u_i(s) + lse_{s0} (L_{i-1}(s0) + P_{i-1}(s0, s))
        left.append(u[..., i] + _step(left[-1], pair[..., i - 1], gamma, 1)[0])
    for j in range(n - 2, -1, -1):  # R_j(s) = u_j(s) + lse_{s1} (R_{j+1}(s1) + P_j(s, s1))
        right.append(u[..., j] + _step(right[-1], pair[..., j], gamma, 2)[0])
    return torch.stack(left, -1), torch.stack(right[::-1], -1)


class _ChainMaxMarginals(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, pair, gamma):
        with torch.no_grad():
            left, right = _recursions(u, pair, gamma)
        ctx.save_for_backward(u, pair, left, right)
        ctx.gamma = gamma
        return left + right - u

    @staticmethod
    def backward(ctx, g):
        u, pair, left, right = ctx.saved_tensors
        gamma, n = ctx.gamma, u.shape[-1]
        d_pair = torch.zeros_like(pair)
        a = [None] * n  # adjoint of L, right to left
        a[n - 1] = g[..., n - 1]
        for i in range(n - 1, 0, -1):
            _, w = _step(left[..., i - 1], pair[..., i - 1], gamma, 1)  # w[s0, s] = dL_i(s) / dL_{i-1}(s0)
            contrib = w * a[i].unsqueeze(1)
            d_pair[..., i - 1] += contrib
            a[i - 1] = g[..., i - 1] + contrib.sum(2)
        b = [None] * n  # adjoint of R, left to right
        b[0] = g[..., 0]
        for j in range(n - 1):
            _, w = _step(right[..., j + 1], pair[..., j], gamma, 2)  # w[s, s1] = dR_j(s) / dR_{j+1}(s1)
            contrib = w * b[j].unsqueeze(2)
            d_pair[..., j] += contrib
            b[j + 1] = g[..., j + 1] + contrib.sum(1)
        d_u = torch.stack(a, -1) + torch.stack(b, -1) - g
        return d_u, d_pair, None


def chain_max_marginals(unary: torch.Tensor, pairwise: torch.Tensor, gamma: float | None = 2.0) -> torch.Tensor:
    """Max-marginals ``M`` ``(N, K, L)`` of ``N`` chains: ``unary`` ``(N, K, L)``, ``pairwise`` ``(N, K, K, L-1)``
    with ``pairwise[n, s, s', i]`` the score of labels ``(s, s')`` at sites ``(i, i+1)``. ``gamma > 0``: smoothed
    at that temperature; ``gamma=None``: hard (Viterbi), whose gradient is the subgradient through the argmax."""
    if unary.dim() != 3:
        raise ValueError(f"unary must be (chains, labels, length), got shape {tuple(unary.shape)}")
    n, k, length = unary.shape
    if tuple(pairwise.shape) != (n, k, k, max(length - 1, 0)):
        raise ValueError(f"pairwise must have shape {(n, k, k, max(length - 1, 0))} for unary {tuple(unary.shape)}, "
                         f"got {tuple(pairwise.shape)}")
    if gamma is not None and not gamma > 0:
        raise ValueError(f"gamma must be > 0 for the smoothed solver (None for the hard one), got {gamma}")
    if length == 1:
        return unary.clone()
    return _ChainMaxMarginals.apply(unary, pairwise, gamma)


def chain_log_partition(unary: torch.Tensor, pairwise: torch.Tensor, gamma: float | None = 2.0) -> torch.Tensor:
    """``gamma * log Z`` (or the max score, hard) of each chain, ``(N,)``: the forward recursion alone, no grad."""
    with torch.no_grad():
        last = unary[..., 0]
        for i in range(1, unary.shape[-1]):
            last = unary[..., i] + _step(last, pairwise[..., i - 1], gamma, 1)[0]
        return last.max(1).values if gamma is None else gamma * torch.logsumexp(last / gamma, 1)
