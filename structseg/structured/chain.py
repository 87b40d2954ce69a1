"""Max-marginals of chain CRFs (seed 002's sub-problem solver), batched over chains, any number of labels.

A chain of length L has unaries ``u_i(s)`` and pairwise scores ``P_i(s, s')`` between sites ``i`` and
``i + 1`` (scores to maximise, as logits are). With ``S(y) = sum_i u_i(y_i) + sum_i P_i(y_i, y_{i+1})``:

- smoothed (temperature ``gamma > 0``): ``M_i(s) = gamma * log sum_{y: y_i = s} exp(S(y) / gamma)``, so
  ``softmax(M_i / gamma)`` is the exact marginal of ``p ~ exp(S / gamma)`` and ``gamma * logsumexp(M_i / gamma)``
  is ``gamma * log Z`` at every position;
- hard (Viterbi): ``M_i(s) = max_{y: y_i = s} S(y)``.

Both come from one forward and one backward recursion, ``M = L + R - u``, as in the released CUDA kernels
(``dp_ne_cuda_kernel.cu``, ``dp_cuda_kernel.cu`` of taconite/DDD-Differentiable-Dual-Decomposition). Here the
left and the right recursion advance together (one batched step per site, not two), in float64 so that
``gamma log Z`` (the dual-decomposition dual) is exact to round-off far below any stopping tolerance.

Layout and speed: the pairwise scores are laid out once, step-major, as :class:`ChainTransitions`
``(L-1, N, K, K)``, so every step reads one contiguous block, and the dual-decomposition loop shares that
layout over its 5 solves. The smoothed step is a batched vector-matrix product in exp space,
``msg(b) = m + c + log sum_a exp(x(a) - m) E(a, b)`` with ``E = exp(P / gamma - c)`` and ``c`` the table's
maximum (the right pass uses ``E`` transposed, a view).

Memory: each solve keeps, per site and pass, the normalised ``exp(x - m)`` and the sums ``s`` (2K float64, 4K
per site for the two passes); ``E`` (K^2 per edge) is stored once for all solves on the same tables, and the
K x K weights ``w = e E / s`` are never stored: the backward pass forms the pairwise gradient of every solve at
once, ``E * sum(e r^T)``. The released kernel keeps 4 K^2 floats per site and solve (K = 21: 1764 against 84).
"""
from __future__ import annotations

import torch

_EXP_SPAN = 700.0  # exp(-700) is about 1e-304, still a normal float64: every table entry keeps its weight


class ChainTransitions:
    """The pairwise scores of ``N`` chains laid out once for every solve on them (:func:`solve_transitions`).

    Smoothed: ``exp_steps = exp(steps / gamma - top)`` ``(L-1, N, K, K)`` float64 with ``top`` ``(L-1, N, 1, 1)``
    the table's maximum (the left pass multiplies by ``E_k``, the right pass by ``E_k`` transposed: no second
    copy); hard: the float64 scores themselves. Gradients: each solve's backward leaves its per-step factors
    in ``pending`` (``dS/dP_k = E_k * (e r^T)`` summed over passes, or the argmax and its adjoint); the pairwise
    gradient of all of them is formed once, when autograd reaches the tables (one batched product over every
    solve instead of one K x K tensor per solve)."""

    def __init__(self, steps: torch.Tensor, gamma: float | None):
        """``steps``: ``(L-1, N, K, K)``, ``steps[k, n, a, b]`` the score of labels ``(a, b)`` on chain ``n``'s
        edge from site ``k`` to ``k + 1`` (``pairwise.permute(3, 0, 1, 2)``, a view, is one)."""
        self.n_chains, self.labels, self.gamma = steps.shape[1], steps.shape[2], gamma
        self.length = steps.shape[0] + 1
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.token = _Layout.apply(steps, self)  # a scalar: the solves' link to the tables in the graph


class _Layout(torch.autograd.Function):
    """steps -> (a zero scalar token); fills the transitions, and in backward turns what the solves left
    in ``pending`` into the gradient of ``steps``."""

    @staticmethod
    def forward(ctx, steps_in, tr):
        scale = 1.0 if tr.gamma is None else 1.0 / tr.gamma
        steps = steps_in.detach().to(torch.float64, copy=True).mul_(scale)
        if tr.gamma is None:
            tr.steps, tr.exp_steps, tr.top = steps, None, None
        else:
            tr.steps = None
            tr.top = steps.amax((2, 3), keepdim=True)
            span = float((tr.top - steps.amin((2, 3), keepdim=True)).max()) if steps.numel() else 0.0
            if span > _EXP_SPAN:
                raise ValueError(f"chain pairwise scores span more than {_EXP_SPAN:.0f} gamma within one K x K table "
                                 f"(here {span:.0f} gamma): their exponentials underflow in float64; scale them down "
                                 "or use the hard solver (gamma=None)")
            tr.exp_steps = steps.sub_(tr.top).exp_()
        ctx.tr, ctx.scale, ctx.dtype = tr, scale, steps_in.dtype
        return steps_in.new_zeros(())

    @staticmethod
    def backward(ctx, _):
        tr, pending = ctx.tr, ctx.tr.pending
        if not pending:
            return None, None
        if tr.gamma is None:
            d_steps = torch.zeros_like(tr.steps)
            flat = d_steps.flatten(2)
            for index, adj in pending:  # flat (a, b) positions and the adjoints that reach them
                flat.scatter_add_(2, index, adj)
        else:  # the sum over solves and passes of the rank-one factors, as one batched product, times E
            a = torch.stack([f for f, _ in pending], -1).flatten(0, 1)  # (steps * N, K, 2 * solves)
            b = torch.stack([f for _, f in pending], -2).flatten(0, 1)  # (steps * N, 2 * solves, K)
            d_steps = torch.bmm(a, b).view_as(tr.exp_steps).mul_(tr.exp_steps)
        tr.pending = []
        return d_steps.mul_(ctx.scale).to(ctx.dtype), None


def _forward_smoothed(v: torch.Tensor, tr: ChainTransitions):
    """Both passes in units of gamma, ``x_left, x_right`` ``(L, N, K)`` (site-major), and every step's
    normalised exponentials ``e`` and sums ``s`` (``(L-1, N, K)`` per pass, indexed by the edge used)."""
    n = v.shape[0]
    left, right = [v[0]], [v[n - 1]]
    e_l, s_l, e_r, s_r = [], [], [], []
    for k in range(n - 1):  # left: site k -> k+1 through E_k; right: site j+1 -> j through E_j^T, j = n-2-k
        j = n - 2 - k
        for xs, es, ss, site, edge, flip in ((left, e_l, s_l, k + 1, k, False), (right, e_r, s_r, j, j, True)):
            prev = xs[-1]
            top = prev.amax(1, keepdim=True)
            e = (prev - top).exp_()
            mat = tr.exp_steps[edge]
            # s >= E at the argmax of e >= exp(-700) (the span check): its log is finite
            s = (torch.bmm(mat, e.unsqueeze(2)).squeeze(2) if flip else torch.bmm(e.unsqueeze(1), mat).squeeze(1))
            xs.append(v[site] + top + tr.top[edge, :, 0] + s.log())
            es.append(e)
            ss.append(s)
    return (torch.stack(left), torch.stack(right[::-1]),
            (torch.stack(e_l), torch.stack(s_l), torch.stack(e_r[::-1]), torch.stack(s_r[::-1])))


def _forward_hard(v: torch.Tensor, tr: ChainTransitions):
    """Both max-sum passes, ``(L, N, K)`` each, and the argmax of every step (indexed by the edge used)."""
    n = v.shape[0]
    left, right = [v[0]], [v[n - 1]]
    p_l, p_r = [], []
    for k in range(n - 1):
        j = n - 2 - k
        best, pick = (left[-1].unsqueeze(2) + tr.steps[k]).max(1)  # over a at site k, for each b at k+1
        left.append(v[k + 1] + best)
        p_l.append(pick)
        best, pick = (tr.steps[j] + right[-1].unsqueeze(1)).max(2)  # over b at site j+1, for each a at j
        right.append(v[j] + best)
        p_r.append(pick)
    return torch.stack(left), torch.stack(right[::-1]), (torch.stack(p_l), torch.stack(p_r[::-1]))


class _ChainSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, token, tr, gamma):
        scale = 1.0 if gamma is None else gamma
        v = u.permute(2, 0, 1).to(torch.float64) / scale  # (L, N, K), contiguous
        left, right, saved = (_forward_hard if gamma is None else _forward_smoothed)(v, tr)
        ctx.save_for_backward(*saved)
        last = left[-1]
        log_z = last.max(1).values if gamma is None else torch.logsumexp(last, 1)
        ctx.tr, ctx.gamma = tr, gamma
        ctx.mark_non_differentiable(log_z)
        m = (left + right - v) * scale
        return m.permute(1, 2, 0).to(u.dtype), log_z * scale

    @staticmethod
    def backward(ctx, g, _):
        tr, gamma, n = ctx.tr, ctx.gamma, ctx.tr.length
        scale = 1.0 if gamma is None else gamma
        g_x = g.permute(2, 0, 1).to(torch.float64) * scale  # direct adjoint of x_left and x_right (L, N, K)
        a_l, a_r = [None] * n, [None] * n  # total adjoints of the left pass (site n-1 down) and the right (0 up)
        a_l[n - 1], a_r[0] = g_x[n - 1], g_x[0]
        want_steps = ctx.needs_input_grad[1]
        if gamma is None:
            p_l, p_r = ctx.saved_tensors
            for k in range(n - 2, -1, -1):  # the adjoint of a step's output flows to its argmax
                a_l[k] = g_x[k].scatter_add(1, p_l[k], a_l[k + 1])
                j = n - 2 - k
                a_r[j + 1] = g_x[j + 1].scatter_add(1, p_r[j], a_r[j])
            if want_steps:
                k_labels = tr.labels
                cols = torch.arange(k_labels, device=g.device)
                out_l, out_r = torch.stack(a_l[1:]), torch.stack(a_r[:-1])  # adjoints of x at k+1 / at j
                tr.pending.append((p_l * k_labels + cols, out_l))  # (a = argmax, b) for each b
                tr.pending.append((cols * k_labels + p_r, out_r))  # (a, b = argmax) for each a
        else:
            e_l, s_l, e_r, s_r = ctx.saved_tensors
            r_l, r_r = [None] * (n - 1), [None] * (n - 1)
            for k in range(n - 2, -1, -1):  # w(a, b) = e(a) E(a, b) / s(b): spread(a) = e(a) sum_b E(a, b) r(b)
                r_l[k] = a_l[k + 1] / s_l[k]
                a_l[k] = g_x[k] + e_l[k] * torch.bmm(tr.exp_steps[k], r_l[k].unsqueeze(2)).squeeze(2)
                j = n - 2 - k
                r_r[j] = a_r[j] / s_r[j]
                a_r[j + 1] = g_x[j + 1] + e_r[j] * torch.bmm(r_r[j].unsqueeze(1), tr.exp_steps[j]).squeeze(1)
            if want_steps:  # dP_k = E_k * (e_l r_l^T + r_r e_r^T)
                tr.pending.append((e_l, torch.stack(r_l)))
                tr.pending.append((torch.stack(r_r), e_r))
        d_v = torch.stack(a_l) + torch.stack(a_r) - g_x
        d_u = (d_v / scale).permute(1, 2, 0).to(g.dtype)
        return d_u, (tr.token.new_zeros(()) if want_steps else None), None, None


def _check(unary: torch.Tensor, pairwise: torch.Tensor, gamma: float | None) -> None:
    if unary.dim() != 3:
        raise ValueError(f"unary must be (chains, labels, length), got shape {tuple(unary.shape)}")
    n, k, length = unary.shape
    if tuple(pairwise.shape) != (n, k, k, max(length - 1, 0)):
        raise ValueError(f"pairwise must have shape {(n, k, k, max(length - 1, 0))} for unary {tuple(unary.shape)}, "
                         f"got {tuple(pairwise.shape)}")
    if gamma is not None and not gamma > 0:
        raise ValueError(f"gamma must be > 0 for the smoothed solver (None for the hard one), got {gamma}")


def solve_transitions(unary: torch.Tensor, tr: ChainTransitions) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`chain_solve` on tables already laid out by :class:`ChainTransitions` (reuse across solves)."""
    if tuple(unary.shape) != (tr.n_chains, tr.labels, tr.length):
        raise ValueError(f"unary {tuple(unary.shape)} does not fit transitions of {tr.n_chains} chains, "
                         f"{tr.labels} labels, length {tr.length}")
    return _ChainSolve.apply(unary, tr.token, tr, tr.gamma)


def chain_solve(unary: torch.Tensor, pairwise: torch.Tensor,
                gamma: float | None = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, log_z)``: max-marginals ``(N, K, L)`` of ``N`` chains (differentiable) and each chain's
    ``gamma * log Z`` (its best score when hard) in float64, ``(N,)``. ``unary`` ``(N, K, L)``, ``pairwise``
    ``(N, K, K, L-1)`` with ``pairwise[n, s, s', i]`` the score of labels ``(s, s')`` at sites ``(i, i+1)``.
    ``gamma > 0``: smoothed at that temperature; ``gamma=None``: hard (Viterbi), whose gradient is the
    subgradient through the argmax."""
    _check(unary, pairwise, gamma)
    if unary.shape[-1] == 1:  # one site: M = u, gamma log Z = gamma logsumexp(u / gamma)
        last = unary[..., 0].detach().double()
        return unary.clone(), last.max(1).values if gamma is None else gamma * torch.logsumexp(last / gamma, 1)
    return solve_transitions(unary, ChainTransitions(pairwise.permute(3, 0, 1, 2), gamma))


def chain_max_marginals(unary: torch.Tensor, pairwise: torch.Tensor, gamma: float | None = 2.0) -> torch.Tensor:
    """The max-marginals of :func:`chain_solve`."""
    return chain_solve(unary, pairwise, gamma)[0]


def chain_log_partition(unary: torch.Tensor, pairwise: torch.Tensor, gamma: float | None = 2.0) -> torch.Tensor:
    """``gamma * log Z`` (the best score when hard) of each chain, float64 ``(N,)``, no gradient."""
    with torch.no_grad():
        return chain_solve(unary, pairwise, gamma)[1]
