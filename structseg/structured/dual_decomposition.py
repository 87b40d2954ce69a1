"""A grid CRF solved by differentiable dual decomposition into chains (seed 002: Wang et al. 2019,
"End-to-end training of CNN-CRF via differentiable dual decomposition", arXiv 1912.02937).

As the released code runs it (``FixedPointIterationGapN`` and ``seg_aspp_resnet.py`` of
taconite/DDD-Differentiable-Dual-Decomposition): for every stride ``s`` (default 1 and 2) and offset
``(i, j)`` in ``{0..s-1}^2``, the sub-lattice ``x[..., i::s, j::s]`` splits into horizontal chains (its rows)
and vertical chains (its columns), so each pixel has ``2 * len(strides)`` copies, each starting from
``unary / copies``. One fixed-point step computes every chain's smoothed max-marginals ``M`` (:mod:`.chain`),
their mean over a pixel's copies ``M_bar``, and moves each copy's unary by ``-alpha * (M - M_bar)`` with
``alpha = 1 / max(H, W)``, which keeps the sum of the copies' unaries equal to the unary exactly. The dual,
the sum over chains of ``gamma * log Z``, stops the loop when it rises by more than ``tol``; the output is the
sum of the copies' ``M`` from the last iteration before it rose. Unlike the released code (float32 sum), the
dual here is accumulated in float64 from a float64 forward recursion, so round-off cannot stop it early.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .chain import ChainTransitions, solve_transitions


@dataclass
class DDParams:
    """``iterations``: solver calls (the seed's 5); ``gamma``: smoothing temperature (None: hard, Viterbi);
    ``strides``: the pairwise terms' edge lengths (the seed's 1 and 2); ``tol``: the dual's allowed rise;
    ``step``: the fixed-point step (None: 1 / max(H, W), the released value)."""

    iterations: int = 5
    gamma: float | None = 2.0
    strides: list[int] = field(default_factory=lambda: [1, 2])
    tol: float = 1e-4
    step: float | None = None

    def validate(self) -> None:
        if not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"dual decomposition: iterations must be an integer >= 1, got {self.iterations!r}")
        if self.gamma is not None and not (isinstance(self.gamma, (int, float)) and self.gamma > 0
                                           and math.isfinite(self.gamma)):
            raise ValueError(f"dual decomposition: gamma must be > 0 (or null for the hard solver), got {self.gamma!r}")
        if not self.strides or len(set(self.strides)) != len(self.strides) or min(self.strides) < 1:
            raise ValueError(f"dual decomposition: strides must be distinct integers >= 1, got {self.strides!r}")
        if self.step is not None and not 0 < self.step <= 1:
            raise ValueError(f"dual decomposition: step must be in (0, 1] (or null), got {self.step!r}")

    @property
    def copies(self) -> int:
        return 2 * len(self.strides)


def sublattices(strides: list[int]) -> list[tuple[int, int, int]]:
    """``(s, i, j)`` of every sub-lattice: one per stride and offset in ``{0..s-1}^2``."""
    return [(s, i, j) for s in strides for i in range(s) for j in range(s)]


def check_grid(h: int, w: int, strides: list[int]) -> None:
    """Each side of the grid must exceed the largest stride (else a stride has no edge)."""
    if min(h, w) <= max(strides):
        raise ValueError(f"dual decomposition: a {h}x{w} grid is too small for stride {max(strides)} "
                         f"(each side must exceed the largest stride)")


def check_tables(unary: torch.Tensor, tables: dict[int, tuple[torch.Tensor, torch.Tensor]],
                 strides: list[int]) -> None:
    """Raise one ValueError for a unary or a pairwise table that cannot serve ``strides``."""
    if unary.dim() != 4:
        raise ValueError(f"dual decomposition: unary must be (B, K, H, W), got shape {tuple(unary.shape)}")
    b, k, h, w = unary.shape
    check_grid(h, w, strides)
    if not torch.isfinite(unary).all():
        raise ValueError("dual decomposition: the unary scores contain NaN or infinity")
    for s in strides:
        if s not in tables:
            raise ValueError(f"dual decomposition: no pairwise tables for stride {s}")
        ph, pv = tables[s]
        for name, t, want in (("horizontal", ph, (b, k, k, h, w - s)), ("vertical", pv, (b, k, k, h - s, w))):
            if tuple(t.shape) != want:
                raise ValueError(f"dual decomposition: stride-{s} {name} pairwise table has shape "
                                 f"{tuple(t.shape)}, expected {want} (B, K, K, H', W')")


def _as_chains(x: torch.Tensor, horizontal: bool) -> torch.Tensor:
    """``(B, ..., H, W)`` -> chains ``(B*H, ..., W)`` (rows) or ``(B*W, ..., H)`` (columns)."""
    if not horizontal:
        x = x.transpose(-1, -2)
    b, rows = x.shape[0], x.shape[-2]
    return x.movedim(-2, 1).reshape(b * rows, *x.shape[1:-2], x.shape[-1])


def _from_chains(m: torch.Tensor, b: int, horizontal: bool) -> torch.Tensor:
    """Inverse of :func:`_as_chains` for ``(chains, K, L)``."""
    x = m.reshape(b, -1, *m.shape[1:]).movedim(1, -2)
    return x if horizontal else x.transpose(-1, -2)


class Subproblems:
    """The copies' unaries and pairwise tables, one per sub-lattice and direction."""

    def __init__(self, unary: torch.Tensor, tables, params: DDParams):
        self.b, self.copies, self.shape = unary.shape[0], params.copies, tuple(unary.shape[-2:])
        self.subs = sublattices(params.strides)
        self.keys = [(n, horizontal) for n in range(len(self.subs)) for horizontal in (True, False)]
        self.u: dict[tuple[int, bool], torch.Tensor] = {}  # (sub index, horizontal) -> copy's unary
        for n, (s, i, j) in enumerate(self.subs):
            share = unary[:, :, i::s, j::s] / params.copies
            for horizontal in (True, False):
                self.u[n, horizontal] = share
        self.longest = max(_as_chains(self.u[key], key[1]).shape[-1] for key in self.keys)
        self.transitions = ChainTransitions(self._chain_steps(tables, params.strides), params.gamma)

    def _chain_steps(self, tables, strides: list[int]) -> torch.Tensor:
        """Every chain's pairwise scores, step-major ``(longest-1, chains, K, K)``, zero past a chain's end.

        One gather from all tables' edges (and one scatter back in the backward pass): the edge ids go through
        the same slicing, chain layout and padding as the unaries, so every edge lands where its chain reads it.
        """
        k = self.u[0, True].shape[1]
        flat, ids, offset = [], {}, 0
        for s in strides:
            for horizontal, table in zip((True, False), tables[s]):
                b, _, _, h, w = table.shape
                flat.append(table.permute(0, 3, 4, 1, 2).reshape(-1, k, k))
                ids[s, horizontal] = torch.arange(offset, offset + b * h * w).view(b, 1, h, w)
                offset += b * h * w
        flat.append(flat[0].new_zeros(1, k, k))  # the padding edge
        chains = []
        for n, horizontal in self.keys:
            s, i, j = self.subs[n]
            x = _as_chains(ids[s, horizontal][..., i::s, j::s], horizontal)[:, 0]
            chains.append(F.pad(x, (0, self.longest - 1 - x.shape[-1]), value=offset))
        index = torch.cat(chains).t().reshape(-1).to(flat[0].device)
        return torch.cat(flat).index_select(0, index).view(self.longest - 1, -1, k, k)

    def solve(self, gamma, with_dual: bool):
        """Max-marginals of every copy, ``{(sub, horizontal): (B, K, h, w)}``, and the dual (float64, or None).

        Every chain of every copy and direction goes into one batched call: chains shorter than the longest are
        padded at their end with zero unaries and zero pairwise scores, which adds ``gamma * pads * log K`` to
        every max-marginal of the chain and to its ``gamma log Z`` (0 for the hard solver); that constant is
        taken off again, so the result equals unpadded solves, with one recursion step per site of the longest."""
        us = [_as_chains(self.u[key], key[1]) for key in self.keys]
        longest = self.longest
        u = torch.cat([F.pad(x, (0, longest - x.shape[-1])) for x in us])
        pads = torch.cat([torch.full((x.shape[0],), longest - x.shape[-1], dtype=torch.float64) for x in us])
        shift = 0.0 if gamma is None else gamma * math.log(u.shape[1])
        m, log_z = solve_transitions(u, self.transitions)
        out, start = {}, 0
        for key, x in zip(self.keys, us):
            part = m[start:start + x.shape[0], :, :x.shape[-1]]
            if shift and longest > x.shape[-1]:
                part = part - shift * (longest - x.shape[-1])
            out[key] = _from_chains(part, self.b, key[1])
            start += x.shape[0]
        if not with_dual:
            return out, None
        return out, (log_z.cpu() - shift * pads).sum().item()

    def scatter(self, m) -> torch.Tensor:
        """The sum of every copy's max-marginals at its pixels, ``(B, K, H, W)``."""
        first = m[0, True]
        total = first.new_zeros(first.shape[0], first.shape[1], *self.shape)
        for n, (s, i, j) in enumerate(self.subs):
            total[:, :, i::s, j::s] += m[n, True] + m[n, False]
        return total

    def update(self, m, total: torch.Tensor, alpha: float) -> None:
        """The fixed-point step: each copy's unary moves by ``-alpha * (M - mean of the pixel's copies' M)``."""
        mean = total / self.copies
        for n, (s, i, j) in enumerate(self.subs):
            for horizontal in (True, False):
                self.u[n, horizontal] = self.u[n, horizontal] - alpha * (m[n, horizontal] - mean[:, :, i::s, j::s])

    def unary_sum(self) -> torch.Tensor:
        """The sum of the copies' unaries at every pixel (the fixed-point step keeps it equal to the unary)."""
        total = self.u[0, True].new_zeros(self.u[0, True].shape[0], self.u[0, True].shape[1], *self.shape)
        for n, (s, i, j) in enumerate(self.subs):
            total[:, :, i::s, j::s] += self.u[n, True] + self.u[n, False]
        return total


def dd_inference(unary: torch.Tensor, tables: dict[int, tuple[torch.Tensor, torch.Tensor]],
                 params: DDParams | None = None, trace: list | None = None) -> torch.Tensor:
    """Logits ``(B, K, H, W)``: the sum of the copies' max-marginals after the fixed-point iterations.

    ``unary``: scores ``(B, K, H, W)``; ``tables[s] = (horizontal (B, K, K, H, W-s), vertical (B, K, K, H-s, W))``:
    the score of labels ``(a, b)`` on the edge from a pixel to its neighbour ``s`` to the right / below.
    ``trace``, when given, receives the dual of every solver call (the last one may be the rise that stopped it).
    """
    params = params or DDParams()
    params.validate()
    check_tables(unary, tables, params.strides)
    h, w = unary.shape[-2:]
    alpha = params.step or 1.0 / max(h, w)
    problems = Subproblems(unary, tables, params)
    best, best_dual = None, None
    for t in range(params.iterations):
        m, dual = problems.solve(params.gamma, with_dual=True)
        if trace is not None:
            trace.append(dual)
        if best is not None and best_dual - dual <= -params.tol:
            break  # the dual rose: keep the previous iteration's marginals (the released rule)
        best, best_dual = problems.scatter(m), dual
        if t < params.iterations - 1:  # the update of the last iteration would never be used
            problems.update(m, best, alpha)
    return best


class PairwiseTables(nn.Module):
    """Image-dependent, full K x K pairwise scores: one 1x1 conv on the concatenated features of an edge's two
    ends, shared by directions and strides, initialised N(0, 1e-3^2) (bias 0) so training starts from the
    plain network's logits."""

    def __init__(self, feature_channels: int, num_classes: int):
        super().__init__()
        self.k = num_classes
        self.conv = nn.Conv2d(2 * feature_channels, num_classes * num_classes, 1)
        nn.init.normal_(self.conv.weight, 0.0, 1e-3)
        nn.init.zeros_(self.conv.bias)

    def forward(self, features: torch.Tensor, strides: list[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        b, _, h, w = features.shape
        tables = {}
        for s in strides:
            ph = self.conv(torch.cat([features[..., :-s], features[..., s:]], 1)).view(b, self.k, self.k, h, w - s)
            pv = self.conv(torch.cat([features[..., :-s, :], features[..., s:, :]], 1)).view(b, self.k, self.k, h - s, w)
            tables[s] = (ph, pv)
        return tables


class DualDecompositionCRF(nn.Module):
    """The trainable layer: ``forward(unary (B, K, H, W), features (B, C, H, W)) -> logits (B, K, H, W)``.

    ``last_duals`` holds the duals of the latest forward pass (its length is the solver calls made).
    """

    def __init__(self, num_classes: int, feature_channels: int, params: DDParams | None = None):
        super().__init__()
        self.params = params or DDParams()
        self.params.validate()
        self.pairwise = PairwiseTables(feature_channels, num_classes)
        self.last_duals: list[float] = []

    def forward(self, unary: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        if features.shape[-2:] != unary.shape[-2:] or features.shape[0] != unary.shape[0]:
            raise ValueError(f"dual decomposition: features {tuple(features.shape)} and unary {tuple(unary.shape)} "
                             "must share batch size and grid")
        check_grid(*unary.shape[-2:], self.params.strides)  # before the tables are built on it
        self.last_duals = []
        tables = self.pairwise(features.float(), self.params.strides)
        return dd_inference(unary.float(), tables, self.params, self.last_duals)
