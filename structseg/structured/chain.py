"""Max-marginals of chain CRFs (seed 002's sub-problem solver), batched over chains, any number of labels.

A chain of length L has unaries ``u_i(s)`` and pairwise scores ``P_i(s, s')`` between sites ``i`` and
``i + 1`` (scores to maximise, as logits are). With ``S(y) = sum_i u_i(y_i) + sum_i P_i(y_i, y_{i+1})``:

- smoothed (temperature ``gamma > 0``): ``M_i(s) = gamma * log sum_{y: y_i = s} exp(S(y) / gamma)``, so
  ``softmax(M_i / gamma)`` is the exact marginal of ``p ~ exp(S / gamma)`` and ``gamma * logsumexp(M_i / gamma)``
  is ``gamma * log Z`` at every position;
- hard (Viterbi): ``M_i(s) = max_{y: y_i = s} S(y)``.

Both come from one forward and one backward recursion, ``M = L + R - u``, as in the released CUDA kernels
(``dp_ne_cuda_kernel.cu``, ``dp_cuda_kernel.cu`` of taconite/DDD-Differentiable-Dual-Decomposition). Here the
left and the right recursion advance together (one batched step per site, not two), and run in float64 so
that ``gamma log Z`` (the dual-decomposition dual) is exact to round-off far below any stopping tolerance.

Memory: the autograd function keeps ``L`` and ``R`` (2K float64 per site) besides the pairwise scores, and
recomputes the K x K transition weights in the backward pass, instead of storing the 4 K^2 floats per site
the released kernel keeps (K = 21: 42 instead of 1764 numbers per site and direction).
"""
from __future__ import annotations

import torch


def _reduce(prev: torch.Tensor, pair: torch.Tensor, gamma: float | None) -> torch.Tensor:
    """``gamma * logsumexp_a (prev[a] + pair[a, b])`` (max for the hard solver): ``(N, K)``, ``(N, K, K)`` -> ``(N, K)``."""
    z = prev.unsqueeze(2) + pair
    return z.max(1).values if gamma is None else gamma * torch.logsumexp(z / gamma, 1)


def _weights(prev: torch.Tensor, pair: torch.Tensor, gamma: float | None) -> torch.Tensor:
    """d :func:`_reduce` / d (prev[a] + pair[a, b]): softmax over ``a``, or one-hot at the argmax."""
    z = prev.unsqueeze(2) + pair
    if gamma is None:
        return torch.zeros_like(z).scatter_(1, z.argmax(1, keepdim=True), 1.0)
    return torch.softmax(z / gamma, 1)


class _ChainSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, pair, gamma):
        n_chains, n = u.shape[0], u.shape[-1]
        u64, p64 = u.double(), pair.double()
        left, right = [u64[..., 0]], [u64[..., -1]]
        for t in range(1, n):  # L_t(s) = u_t(s) + lse_a (L_{t-1}(a) + P_{t-1}(a, s)) and
            j = n - 1 - t      # R_j(s) = u_j(s) + lse_b (R_{j+1}(b) + P_j(s, b)), in one batched step
            msg = _reduce(torch.cat([left[-1], right[-1]]),
                          torch.cat([p64[..., t - 1], p64[..., j].transpose(1, 2)]), gamma)
            left.append(u64[..., t] + msg[:n_chains])
            right.append(u64[..., j] + msg[n_chains:])
        left, right = torch.stack(left, -1), torch.stack(right[::-1], -1)
        last = left[..., -1]
        log_z = last.max(1).values if gamma is None else gamma * torch.logsumexp(last / gamma, 1)
        ctx.save_for_backward(pair, left, right)
        ctx.gamma = gamma
        ctx.mark_non_differentiable(log_z)
        return (left + right - u64).to(u.dtype), log_z

    @staticmethod
    def backward(ctx, g, _):
        pair, left, right = ctx.saved_tensors
        gamma, n_chains, n = ctx.gamma, pair.shape[0], left.shape[-1]
        g64, p64 = g.double(), pair.double()
        p_t = p64.transpose(1, 2)
        d_pair = torch.zeros_like(p64)
        a, b = [None] * n, [None] * n  # adjoints of L (right to left) and of R (left to right)
        a[n - 1], b[0] = g64[..., n - 1], g64[..., 0]
        for t in range(1, n):
            i, j = n - t, t - 1  # a: from site i back to i-1 through P_{i-1}; b: from j on to j+1 through P_j
            w = _weights(torch.cat([left[..., i - 1], right[..., j + 1]]),
                         torch.cat([p64[..., i - 1], p_t[..., j]]), gamma)
            contrib = w * torch.cat([a[i], b[j]]).unsqueeze(1)
            d_pair[..., i - 1] += contrib[:n_chains]
            d_pair[..., j] += contrib[n_chains:].transpose(1, 2)
            spread = contrib.sum(2)
            a[i - 1] = g64[..., i - 1] + spread[:n_chains]
            b[j + 1] = g64[..., j + 1] + spread[n_chains:]
        d_u = torch.stack(a, -1) + torch.stack(b, -1) - g64
        return d_u.to(g.dtype), d_pair.to(pair.dtype), None


def _check(unary: torch.Tensor, pairwise: torch.Tensor, gamma: float | None) -> None:
    if unary.dim() != 3:
        raise ValueError(f"unary must be (chains, labels, length), got shape {tuple(unary.shape)}")
    n, k, length = unary.shape
    if tuple(pairwise.shape) != (n, k, k, max(length - 1, 0)):
        raise ValueError(f"pairwise must have shape {(n, k, k, max(length - 1, 0))} for unary {tuple(unary.shape)}, "
                         f"got {tuple(pairwise.shape)}")
    if gamma is not None and not gamma > 0:
        raise ValueError(f"gamma must be > 0 for the smoothed solver (None for the hard one), got {gamma}")


def chain_solve(unary: torch.Tensor, pairwise: torch.Tensor,
                gamma: float | None = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, log_z)``: max-marginals ``(N, K, L)`` of ``N`` chains (differentiable) and each chain's
    ``gamma * log Z`` (its best score when hard) in float64, ``(N,)``. ``unary`` ``(N, K, L)``, ``pairwise``
    ``(N, K, K, L-1)`` with ``pairwise[n, s, s', i]`` the score of labels ``(s, s')`` at sites ``(i, i+1)``.
    ``gamma > 0``: smoothed at that temperature; ``gamma=None``: hard (Viterbi), whose gradient is the
    subgradient through the argmax."""
    _check(unary, pairwise, gamma)
    return _ChainSolve.apply(unary, pairwise, gamma)


def chain_max_marginals(unary: torch.Tensor, pairwise: torch.Tensor, gamma: float | None = 2.0) -> torch.Tensor:
    """The max-marginals of :func:`chain_solve`."""
    return chain_solve(unary, pairwise, gamma)[0]


def chain_log_partition(unary: torch.Tensor, pairwise: torch.Tensor, gamma: float | None = 2.0) -> torch.Tensor:
    """``gamma * log Z`` (the best score when hard) of each chain, float64 ``(N,)``, no gradient."""
    with torch.no_grad():
        return chain_solve(unary, pairwise, gamma)[1]
